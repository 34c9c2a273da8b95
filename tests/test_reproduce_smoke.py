"""CI smoke of ``experiments/reproduce.py``: every stage in miniature on the real SmolLM2-135M and real data.

Checks: every stage JSON is written; the turning-point curve and PNG exist and k is chosen below the last layer;
the identity row (``from_layer=-1`` + last pooling) equals causal; RESULTS.md is marked SMOKE and its table holds
exactly the numbers of the JSON files; a rerun skips every stage; other settings in the same directory are
refused; ``--report`` regenerates the file. Skipped only when the real model cannot be found.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "reproduce.py"


def _model_available() -> bool:
    try:
        from bellm.models import default_data_dir, default_model

        default_model(download=False)
        default_data_dir()
    except FileNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _model_available(), reason="the real SmolLM2 GGUF or shared/data not found"
)


def _run(*args, timeout=900):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        # the model path, not the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 for kernel
        # tests; a module-scoped fixture runs before its per-test reset)
        env={**os.environ, "TRITON_INTERPRET": "0"},
    )


def _cpu_seconds() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    proc = _run("--smoke", "--output", str(out))
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"smoke run: {seconds:.0f} s, {_cpu_seconds() - cpu0:.0f} CPU s")
    return out


def _stage(out: Path, name: str) -> dict:
    return json.loads((out / "stages" / f"{name}.json").read_text())


def test_every_stage_ran_and_the_design_is_sane(smoke):
    tp = _stage(smoke, "turning_point")
    d = tp["design"]
    L = d["num_layers"]
    assert L == 30
    assert 0 <= d["k_bellm"] <= L - 2  # below the last layer, where bidirectionality can matter
    assert d["k_quarter"] != d["k_bellm"]
    assert len(tp["curve"]["scores"]) == L + 1 and tp["curve"]["scores"][0] is None  # layer 0 constant
    assert (smoke / "turning_point" / "turning_point.png").stat().st_size > 1000
    names = [
        "base",
        "plan",
        "untrained-causal",
        "untrained-identity-last",
        f"untrained-bellm-k{d['k_bellm']}",
        "untrained-all-bidirectional",
        "untrained-causal-mean",
        "untrained-last-layer-mean",
    ]
    for arm, seeds in (
        ("causal", (42, 43)),
        (f"bellm-k{d['k_bellm']}", (42, 43)),
        (f"bidir-k{d['k_quarter']}", (42,)),
        ("all-bidirectional", (42,)),
        ("last-layer-mean", (42,)),
        ("causal-mean", (42,)),
    ):
        names += [f"train-{arm}-seed{s}" for s in seeds] + [f"eval-{arm}-seed{s}" for s in seeds]
    for n in names:
        assert (smoke / "stages" / f"{n}.json").is_file(), n
    mean_arm = _stage(smoke, "train-last-layer-mean-seed42")
    assert mean_arm["config"]["pooling"] == "mean" and mean_arm["config"]["from_layer"] == L - 1
    enc = json.loads(
        (smoke / mean_arm["train"]["output_dir"] / "bellm_encoder.json").read_text()
    )  # stage JSONs hold paths relative to the run directory
    assert enc["pooling"] == "mean"
    # same budget for every arm
    configs = [_stage(smoke, n)["config"] for n in names if n.startswith("train-")]
    for key in ("max_steps", "batch_size", "lr", "lora_r", "lora_alpha", "data", "max_length"):
        assert len({json.dumps(c[key]) for c in configs}) == 1, key


def test_identity_row_equals_causal(smoke):
    causal, identity = _stage(smoke, "untrained-causal"), _stage(smoke, "untrained-identity-last")
    for task, score in causal["scores"].items():
        other = identity["scores"][task]
        assert (score is None) == (other is None)
        if score is not None:
            assert abs(score - other) < 1e-6, task
    bidir = _stage(smoke, "untrained-all-bidirectional")
    assert bidir["scores"] != causal["scores"]  # the patch does change the model below the last layer
    # with mean pooling the last layer's bidirectionality does reach the embedding
    import numpy as np

    with (
        np.load(smoke / "cache" / "untrained-causal-mean.npz") as a,
        np.load(smoke / "cache" / "untrained-last-layer-mean.npz") as b,
    ):
        first = dict(zip(a["sentences"].tolist(), a["embeddings"]))
        second = dict(zip(b["sentences"].tolist(), b["embeddings"]))
    assert first.keys() == second.keys()
    assert max(float(np.abs(first[k] - second[k]).max()) for k in first) > 1e-3


def test_results_md_is_generated_from_json_and_marked_smoke(smoke):
    text = (smoke / "RESULTS.md").read_text()
    assert "SMOKE RUN" in text
    assert (
        "results_assets/turning_point.png" in text
        and (smoke / "results_assets" / "turning_point.png").is_file()
    )
    causal = _stage(smoke, "eval-causal-seed42")
    row = next(line for line in text.splitlines() if line.startswith("| causal, seed 42 |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    expected = [f"{v:.2f}" if v is not None else "undefined" for v in causal["scores"].values()]
    expected.append(f"{causal['average']:.2f}" if causal["average"] is not None else "undefined")
    assert cells == expected
    assert "86.29" in text and "85.96" in text  # the paper's rows, for scale
    assert "## 4. Reading" in text and "BeLLM - causal" in text
    assert "paired bootstrap over the evaluated pairs" in text  # test-pair noise of the headline
    assert "Claim (a)" in text  # the turning-point claim is read too


def test_rerun_skips_everything_refuses_other_settings_and_reports(smoke):
    before = {p.name: p.stat().st_mtime_ns for p in (smoke / "stages").glob("*.json")}
    t0 = time.perf_counter()
    proc = _run("--smoke", "--output", str(smoke))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - t0 < 60
    after = {p.name: p.stat().st_mtime_ns for p in (smoke / "stages").glob("*.json")}
    assert before == after
    proc = _run("--smoke", "--steps", "3", "--output", str(smoke))
    assert proc.returncode == 2 and "steps: saved 1, now 3" in proc.stderr
    proc = _run("--smoke", "--seeds", "43", "42", "--output", str(smoke))  # not an extension: refused
    assert proc.returncode == 2 and "seeds: saved [42, 43], now [43, 42]" in proc.stderr
    (smoke / "RESULTS.md").unlink()
    proc = _run("--report", "--output", str(smoke))
    assert proc.returncode == 0 and "SMOKE RUN" in (smoke / "RESULTS.md").read_text()


def test_bad_options_fail_clearly(tmp_path):
    proc = _run("--smoke", "--seeds", "42", "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and "at least 2 distinct seeds" in proc.stderr
    proc = _run("--model", str(tmp_path / "missing"), "--output", str(tmp_path / "y"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = _run("--report", "--output", str(tmp_path / "z"))
    assert proc.returncode == 2 and "holds no run" in proc.stderr


def _load_script():
    """The script's API, from the ``experiments`` package it runs."""
    import types

    from experiments import cli, settings, stages, stats

    return types.SimpleNamespace(
        Settings=settings.Settings,
        Run=stages.Run,
        pair_bootstrap=stats.pair_bootstrap,
        row_spearman=stats.row_spearman,
        build_parser=cli.build_parser,
        settings_from_args=cli.settings_from_args,
    )


def test_more_seeds_extend_a_run(smoke, tmp_path):
    extended = tmp_path / "run"
    shutil.copytree(smoke, extended)
    proc = _run("--smoke", "--seeds", "42", "43", "44", "--output", str(extended))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((extended / "settings.json").read_text())["seeds"] == [42, 43, 44]
    for name in ("causal", f"bellm-k{_stage(smoke, 'turning_point')['design']['k_bellm']}"):
        assert (extended / "stages" / f"eval-{name}-seed44.json").is_file()
    before = _stage(smoke, "eval-causal-seed42")
    assert _stage(extended, "eval-causal-seed42") == before  # finished stages are kept, not rerun
    assert "mean of 3 seeds" in (extended / "RESULTS.md").read_text()


def test_pair_bootstrap_is_paired_and_signed(smoke, tmp_path):
    rep = _load_script()
    settings = rep.Settings(**json.loads((smoke / "settings.json").read_text()))
    run = rep.Run(smoke, settings, progress=False)
    d = _stage(smoke, "turning_point")["design"]
    seeds = settings.seeds
    boot = rep.pair_bootstrap(run, d, seeds, n_boot=200)
    assert boot is not None and boot["lo"] <= boot["hi"] and 0.0 <= boot["share_le_0"] <= 1.0
    # BeLLM's embeddings replaced by causal's: every paired resample differs by exactly 0
    copy = tmp_path / "run"
    (copy / "cache").mkdir(parents=True)
    (copy / "stages").mkdir()
    bellm_name = f"bellm-k{d['k_bellm']}"
    for seed in seeds:
        causal = smoke / "cache" / f"eval-causal-seed{seed}.npz"
        (copy / "cache" / causal.name).write_bytes(causal.read_bytes())
        (copy / "cache" / f"eval-{bellm_name}-seed{seed}.npz").write_bytes(causal.read_bytes())
    same = rep.pair_bootstrap(rep.Run(copy, settings, progress=False), d, seeds, n_boot=200)
    assert same is not None and same["lo"] == 0.0 and same["hi"] == 0.0 and same["share_le_0"] == 1.0
    # swapping the arms flips the sign of the interval
    for seed in seeds:
        c = copy / "cache" / f"eval-causal-seed{seed}.npz"
        b = copy / "cache" / f"eval-{bellm_name}-seed{seed}.npz"
        c.write_bytes((smoke / "cache" / f"eval-{bellm_name}-seed{seed}.npz").read_bytes())
        b.write_bytes((smoke / "cache" / f"eval-causal-seed{seed}.npz").read_bytes())
    flipped = rep.pair_bootstrap(rep.Run(copy, settings, progress=False), d, seeds, n_boot=200)
    assert flipped["lo"] == pytest.approx(-boot["hi"]) and flipped["hi"] == pytest.approx(-boot["lo"])
    (copy / "cache" / f"eval-causal-seed{seeds[0]}.npz").unlink()
    assert rep.pair_bootstrap(rep.Run(copy, settings, progress=False), d, seeds) is None  # no cache: no claim


def test_commands_block_counts_sittings_once_per_command():
    from experiments.report import _commands_block

    base = "python experiments/reproduce.py --depth-study --output runs/d"
    cmds = [
        {"command": f"{base} --plan", "started": "2026-12-01 10:00:00"},
        {"command": f"{base} --stop-after 60", "started": "2026-12-01 10:05:00"},
        {"command": f"{base} --stop-after=5", "started": "2026-12-01 12:00:00"},
    ]
    assert _commands_block(cmds).splitlines() == [
        "```",
        f"{base} --plan    # run once, 2026-12-01 10:00:00",
        f"{base} --stop-after <minutes>    # run 2 times, 2026-12-01 10:05:00 to 2026-12-01 12:00:00",
        "```",
    ]
    assert _commands_block([]) == "```\n```"


def test_row_spearman_matches_scipy():
    import numpy as np
    from scipy.stats import spearmanr

    rep = _load_script()
    rng = np.random.default_rng(3)
    pred, gold = rng.normal(size=(6, 33)), np.round(rng.normal(size=(6, 33)), 1)  # ties in gold
    got = rep.row_spearman(pred.copy(), gold.copy())
    assert np.allclose(got, [spearmanr(pred[i], gold[i]).statistic for i in range(6)], atol=1e-12)
    assert np.isnan(rep.row_spearman(np.ones((1, 5)), gold[:1, :5])).all()  # constant: undefined


def test_cli_budget_options():
    rep = _load_script()
    parse = rep.build_parser().parse_args
    assert rep.settings_from_args(parse(["--eval-max-pairs", "0"])).eval_max_pairs is None  # every pair
    assert rep.settings_from_args(parse(["--preset", "paper"])).eval_max_pairs is None  # the paper protocol
    default = rep.settings_from_args(parse([]))
    assert len(default.seeds) >= 3 and default.eval_max_pairs == 300 and default.steps == 100
    assert rep.settings_from_args(parse(["--smoke"])).seeds == [42, 43]


@pytest.fixture(scope="module")
def depth_smoke(smoke, tmp_path_factory):
    """The depth study as an extension of the smoke run, started the way a later sitting on a new machine starts
    it from git: the embedding caches are gone (the bootstrap reads the stage JSONs' cosines) and so is the
    adapter of causal seed 42 (the full-protocol check trains it again from its recorded config)."""
    out = tmp_path_factory.mktemp("depth") / "run"
    shutil.copytree(smoke, out, ignore=shutil.ignore_patterns("cache", "causal-seed42"))
    before = {p.name: p.read_bytes() for p in (out / "stages").glob("*.json")}
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    proc = _run("--smoke", "--depth-study", "--output", str(out))
    print(f"depth-study smoke: {time.perf_counter() - t0:.0f} s, {_cpu_seconds() - cpu0:.0f} CPU s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = {p.name: p.read_bytes() for p in (out / "stages").glob("*.json")}
    assert {n: after[n] for n in before} == before  # every finished stage is kept, none rerun
    return out


def test_depth_study_runs_the_new_arm_the_longer_budget_and_every_pair(depth_smoke):
    d = _stage(depth_smoke, "turning_point")["design"]
    L, k, kq = d["num_layers"], d["k_bellm"], d["k_quarter"]
    depths = [f"bellm-k{k}", f"bidir-k{kq}", "all-bidirectional"]
    if L // 2 not in (k, kq):
        depths.append(f"bidir-k{L // 2}")
    for arm in ["causal", *depths, "last-layer-mean", "causal-mean"]:  # --depth-seeds 1 in the smoke
        for seed in (42, 43) if arm in ("causal", f"bellm-k{k}") else (42,):
            assert (depth_smoke / "stages" / f"eval-{arm}-seed{seed}.json").is_file(), (arm, seed)
    best = _stage(depth_smoke, "best-depth")
    assert best["arm"]["name"] in depths
    means = best["mean_paired_difference"]
    assert means[best["arm"]["name"]] == max(means.values())
    long_causal = _stage(depth_smoke, "train-long2x-causal-seed42")["config"]
    assert long_causal["max_steps"] == 2 * _stage(depth_smoke, "train-causal-seed42")["config"]["max_steps"]
    assert (depth_smoke / "stages" / f"eval-long2x-{best['arm']['name']}-seed42.json").is_file()
    assert (depth_smoke / "train" / "causal-seed42" / "adapter_model.safetensors").is_file()  # trained again
    for arm in ("causal", best["arm"]["name"]):
        full = _stage(depth_smoke, f"fullpairs-{arm}-seed42")
        assert full["protocol"]["max_pairs"] == 8 and all(n == 8 for n in full["pairs"].values())


def test_stage_json_is_portable_and_holds_the_pair_cosines(depth_smoke):
    """No stage JSON names the run directory (a committed run moves); the stored cosines give back every
    reported score."""
    import numpy as np
    from scipy.stats import spearmanr

    from bellm.sts_data import load_sts

    for path in (depth_smoke / "stages").glob("*.json"):
        assert str(depth_smoke) not in path.read_text(), path.name
    for name in (
        "eval-causal-seed43",
        f"eval-bidir-k{_stage(depth_smoke, 'turning_point')['design']['k_quarter']}-seed42",
        "fullpairs-causal-seed42",
    ):
        result = _stage(depth_smoke, name)
        for task, cosines in result["pair_cosines"].items():
            gold = load_sts(task, "test").sample(result["protocol"]["max_pairs"], 0).scores
            expected = result["scores"][task]
            rho = spearmanr(np.asarray(cosines), gold).statistic * 100
            assert (expected is None and np.isnan(rho)) or abs(rho - expected) < 1e-4, (name, task)


def test_depth_study_report_shows_only_finished_stages(depth_smoke, tmp_path):
    text = (depth_smoke / "RESULTS.md").read_text()
    assert "SMOKE RUN" in text and "not run" not in text
    for heading in (
        "## 4. Paired differences",
        "## 5. Δ(k)",
        "## 6. A longer budget",
        "## 7. Sampled",
        "## 8.",
    ):
        assert heading in text, heading
    assert (depth_smoke / "results_assets" / "delta_vs_k.png").stat().st_size > 1000
    assert "causal − causal" not in text and "from_layer=-1 (29), mean pooling − causal, mean pooling" in text
    assert (
        "**In plain words**" in text and "undecided (fewer than 3 paired seeds): k=" in text
    )  # 1 to 2 seeds
    assert "- For the released last-layer setting:" in text and "CPU time at most" in text
    assert "(the pooling differs: mean pooling against last-token pooling)." in text
    partial = tmp_path / "run"
    shutil.copytree(depth_smoke, partial)
    for p in (partial / "stages").glob("*.json"):
        if p.name.startswith(("eval-", "train-", "best-", "fullpairs-")) and "seed42" not in p.name:
            p.unlink()
    (partial / "stages" / "best-depth.json").unlink(missing_ok=True)
    proc = _run("--report", "--output", str(partial))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (partial / "RESULTS.md").read_text()
    assert "**partial run**" in text and "not run |" not in text
    assert (
        "| undecided |" in text and "| helps |" not in text and "| hurts |" not in text
    )  # one seed: no verdict
    assert "## 6. A longer budget (2x the steps)\n\nNot run yet" in text
