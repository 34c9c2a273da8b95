"""``python experiments/reproduce.py``: options, settings from them, and the entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import experiments
from bellm._io import atomic_write_json
from experiments.report import format_plan, write_report
from experiments.settings import PAPER_PRESET, ReproduceError, Settings
from experiments.stages import Run

__all__ = ["build_parser", "settings_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The script's options; the budget options default to None, meaning the preset's value."""
    p = argparse.ArgumentParser(
        prog="reproduce.py",
        description=experiments.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "--output",
        default=str(Path.home() / ".cache" / "bellm" / "reproduce"),
        help="run directory (default ~/.cache/bellm/reproduce); rerun with it to resume",
    )
    p.add_argument(
        "--plan", action="store_true", help="measure throughput, print the wall-time estimate, stop"
    )
    p.add_argument("--report", action="store_true", help="only regenerate RESULTS.md from the JSON results")
    p.add_argument("--results-md", default=None, help="also write RESULTS.md here (e.g. the repository root)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CI version (1 step, 4 pairs per set, 2 seeds); marked SMOKE",
    )
    p.add_argument(
        "--preset",
        choices=("cpu", "paper"),
        default="cpu",
        help="cpu: the small-budget defaults; paper: BeLLM's stage-1 hyper-parameters (GPU, 7B)",
    )
    p.add_argument(
        "--model", default=None, help="local model directory or .gguf (default: SmolLM2-135M GGUF)"
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    p.add_argument(
        "--dtype", default=None, help="float32 / bfloat16 / float16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding sts/ and nli/ (default: $BELLM_DATA_DIR; else shared/data beside the working "
        "directory or the repository)",
    )
    p.add_argument(
        "--train-data", default=None, help="triplets file (default: <data-dir>/nli/snli_devtest...)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="headline seeds (>= 2; default 42 43 44 45 46)"
    )
    for name, kind in (
        ("steps", int),
        ("epochs", int),
        ("batch_size", int),
        ("grad_accum", int),
        ("lr", float),
        ("warmup_steps", int),
        ("lora_r", int),
        ("lora_alpha", int),
        ("max_length", int),
        ("max_examples", int),
        ("tp_pairs", int),
        ("eval_max_pairs", int),
        ("encode_batch_size", int),
    ):
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            help=f"default {getattr(Settings(), name)!r} (cpu preset)"
            + ("; 0 = every pair (the paper protocol)" if name == "eval_max_pairs" else ""),
        )
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--depth-study",
        action="store_true",
        default=None,
        help="every trained arm with every seed, plus the middle depth (L//2), a longer budget for causal and\n"
        "the best depth, and every test pair for one seed of both (see experiments/README.md)",
    )
    for name in ("depth_seeds", "long_multiple", "long_seeds", "full_max_pairs"):
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=int,
            default=None,
            help=f"depth study: default {getattr(Settings(), name)!r}"
            + ("; 0 = every pair" if name == "full_max_pairs" else ""),
        )
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no stage after MINUTES (the report is written; rerun the same command to resume)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (CI logs)")
    return p


def settings_from_args(args) -> Settings:
    """Settings from the options: the preset, then the options given; ReproduceError for a value that cannot
    work (fewer than 2 seeds, a count below 1, a missing --model)."""
    overrides = {
        k: getattr(args, k)
        for k in (
            "model",
            "gguf_file",
            "dtype",
            "device",
            "data_dir",
            "train_data",
            "seeds",
            "steps",
            "epochs",
            "batch_size",
            "grad_accum",
            "lr",
            "warmup_steps",
            "lora_r",
            "lora_alpha",
            "max_length",
            "max_examples",
            "tp_pairs",
            "eval_max_pairs",
            "encode_batch_size",
            "load_in_4bit",
            "depth_study",
            "depth_seeds",
            "long_multiple",
            "long_seeds",
            "full_max_pairs",
        )
        if getattr(args, k) is not None
    }
    if args.preset == "paper":
        overrides = {**PAPER_PRESET, **overrides}
    for key in ("eval_max_pairs", "full_max_pairs"):
        if overrides.get(key) == 0:
            overrides[key] = None  # every pair
    settings = Settings.smoke_settings(**overrides) if args.smoke else Settings(**overrides)
    if len(settings.seeds) < 2 or len(set(settings.seeds)) != len(settings.seeds):
        raise ReproduceError(
            f"--seeds needs at least 2 distinct seeds for the seed-to-seed spread, got {settings.seeds}"
        )
    for name in (
        "steps",
        "epochs",
        "batch_size",
        "grad_accum",
        "lora_r",
        "max_length",
        "tp_pairs",
        "eval_max_pairs",
        "max_examples",
        "depth_seeds",
        "long_multiple",
        "long_seeds",
        "full_max_pairs",
    ):
        v = getattr(settings, name)
        if v is not None and v < 1:
            raise ReproduceError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if settings.model is not None and not Path(settings.model).exists():
        raise ReproduceError(
            f"--model {settings.model!r} does not exist; pass a local directory or .gguf file "
            "(nothing is downloaded)"
        )
    return settings


def _record_command(run: Run) -> None:
    path = run.out / "commands.json"
    cmds = json.loads(path.read_text()) if path.is_file() else []
    cmd = " ".join([Path(sys.executable).name, *[a if " " not in a else repr(a) for a in sys.argv]])
    cmds.append({"command": cmd, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    atomic_write_json(path, cmds)


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the stages and write RESULTS.md; ``--plan`` stops after the estimate, ``--report`` only
    writes the report. Returns 2 with a one-line error for an option or run directory that cannot be used."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = settings_from_args(args)
        run = Run(args.output, settings, progress=not args.no_progress)
        if args.report:
            if not (run.out / "settings.json").is_file():
                raise ReproduceError(f"{run.out} holds no run (no settings.json); pass the run's --output")
            run.settings = Settings.from_saved(json.loads((run.out / "settings.json").read_text()))
        else:
            run.out.mkdir(parents=True, exist_ok=True)
            run.check_settings()
            run.check_inputs()
            _record_command(run)
            run.base()
            if args.plan:
                run.stage("plan", run._measure, redo=True)  # the throughput of this machine, now
                print(format_plan(run, run.estimate()))
                return 0
            tqdm.write(format_plan(run, run.estimate()))
            left = run.run_all(None if args.stop_after is None else 60.0 * args.stop_after)
            if left:
                print(f"stopped with {left} stage(s) left (--stop-after); rerun the same command to resume")
    except ReproduceError as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return 2
    path = write_report(run)
    print(f"wrote {path}")
    if args.results_md:
        extra = write_report(run, Path(args.results_md))
        print(f"wrote {extra}")
    return 0
