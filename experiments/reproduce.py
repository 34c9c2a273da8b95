"""Reproduce BeLLM's claims end to end with bellm's own API: turning point, untrained rows, trained arms,
RESULTS.md.

    python experiments/reproduce.py --plan  # measure throughput, print the full run's wall-time estimate
    python experiments/reproduce.py                   # run (or resume) everything, then write RESULTS.md
    python experiments/reproduce.py --report          # only regenerate RESULTS.md from the JSON results
    python experiments/reproduce.py --smoke --output /tmp/smoke   # tiny version for CI (minutes)

The claims (BeLLM, Li & Li 2024, with the paper's numbers): (a) a causal LLM has a
*turning point*, a layer after which its sentence embeddings get worse on STS; (b) making the attention layers
after it bidirectional and training with AnglE beats the same model kept causal (86.29 vs 85.96 average on
STS12-16, STS-B, SICK-R with LLaMA-2-7B).

Stages (each writes ``<output>/stages/<name>.json`` atomically when it finishes and is skipped when that file
exists; training resumes from its own checkpoints, evaluation from a persisted embedding cache):

1. ``base``: the model, materialised once. A GGUF (the default SmolLM2-135M-Instruct) is de-quantised and
   saved as safetensors under ``<output>/base_model`` so every later load takes seconds, not a
   de-quantisation.
2. ``plan``: measured encode throughput (sentences/s on the evaluation sentences) and training step time; the
   full run's wall-time estimate (``--plan`` prints it and stops).
3. ``turning_point``: :func:`bellm.find_turning_point` on the *untrained, causal* model (STS-B **dev**, never
   the test sets; the final norm applied to every layer and constant layers undefined: docs/bidirectional.md, sections 2
   and 3)
   and a :func:`bellm.sweep_from_layer` over the ``from_layer`` values the arms use. Chooses ``k`` for BeLLM
   (below).
4. ``untrained-<row>``: :func:`bellm.evaluate_sts` (paper protocol, seven sets; on the CPU preset 300 sampled pairs
   per set, the same for every row, ``--eval-max-pairs 0`` for every pair) of the untrained model: causal,
   bidirectional from ``k``, all-bidirectional, the measured identity row ``from_layer=-1`` + last-token pooling,
   which equals causal exactly (docs/bidirectional.md, section 1) and is therefore shown, not trained, and mean
   pooling causal vs ``from_layer=-1`` (the last layer's bidirectionality alone, untrained).
5. ``train-<arm>-seed<s>`` / ``eval-<arm>-seed<s>``: :func:`bellm.train` with one budget for every arm (same
   data, steps, batch, LoRA, learning rate, seed) and :func:`bellm.evaluate_sts` of
   ``Encoder.from_pretrained(base, adapter=..., from_layer=..., pooling=...)``. Arms: causal; BeLLM from
   ``k``; a second depth (the upper quarter of the layers); all-bidirectional (``from_layer=0``); the last
   layer bidirectional with *mean* pooling (where the last layer can matter) and its control, causal with
   mean pooling. The headline pair (causal,
   BeLLM) runs with every seed in ``--seeds`` (at least two; default five) for seed-to-seed spread, and the
   report adds a paired bootstrap over the evaluated test pairs (:func:`pair_bootstrap`); the others with the
   first seed.

Choosing ``k``: the turning point ``t`` (earliest layer with the best dev Spearman, :func:`bellm.find_turning_point`)
when ``t <= L-2``. When ``t >= L-1`` bidirectionality from ``t`` cannot change a last-token embedding
(docs/bidirectional.md, section 1), so ``k`` is the best-scoring layer among ``0..L-2`` of the same curve; the report
states which rule applied.

Training data: the real SNLI triplets (``nli/snli_devtest_triplets.tsv.gz`` in the data directory, 6,339 (anchor,
entailment, contradiction) triplets), the paper's kind of data (NLI only, AnglE's triplet format). STS-B train
pairs are *not* added: the paper trains on NLI only, STS-B is one of the seven evaluation tasks (in-domain
supervision would inflate it relative to the paper's protocol), and the same data goes to every arm anyway.

Nothing here is hand-typed into RESULTS.md: every number comes from the stage JSON files. A ``--smoke`` run is
marked as such in its RESULTS.md and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:
    import bellm
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
    import bellm
from bellm._io import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from bellm.common import BELLM_PROMPT, normalize_whitespace  # noqa: E402
from bellm.common import format_score as _fmt  # noqa: E402
from bellm.evaluate import to_jsonable  # noqa: E402
from bellm.sts_data import TASKS, load_sts  # noqa: E402
from bellm.trainer import TrainConfig  # noqa: E402
from bellm.trainer import train as train_arm  # noqa: E402

DOC = "[docs/bidirectional.md](docs/bidirectional.md)"  # the report links the project's own page
SHORT = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}

# Paper numbers, for scale only (the BeLLM paper, Li & Li 2024): Spearman x 100, SentEval protocol, LLaMA-2-7B.
PAPER_ROWS = {
    "BeLLM-LLaMA-2-7B (last layer bidirectional, NLI)": [
        78.36,
        90.88,
        86.28,
        89.89,
        86.59,
        88.89,
        83.17,
        86.29,
    ],
    "AnglE-LLaMA-2-7B (causal, NLI)": [79.00, 90.56, 85.79, 89.43, 87.00, 88.97, 80.94, 85.96],
}
PAPER_DELTA = 86.29 - 85.96


class ReproduceError(RuntimeError):
    """A run directory or option that cannot be used; the message names the value and the fix."""


# ---------------------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """Everything that decides the numbers. A run directory keeps its settings: resuming with other ones is
    refused (``settings.json``)."""

    model: str | None = None  # None: the real SmolLM2-135M-Instruct GGUF (bellm.models.default_model)
    gguf_file: str | None = None
    dtype: str | None = None
    device: str | None = None
    data_dir: str | None = None
    train_data: str | None = None  # None: <data_dir>/nli/snli_devtest_triplets.tsv.gz
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44, 45, 46])
    steps: int | None = 100  # optimizer steps per arm (None: --epochs); 100 x 16 triplets fit one sitting
    epochs: int = 1
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 10
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.1
    max_length: int = 60
    max_examples: int | None = None
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    tp_pairs: int | None = None  # STS-B dev pairs for the turning point (None: all 1500)
    # Pairs sampled (fixed seed 0, the same pairs for every row) per STS test set. None: every pair, the paper
    # protocol (18,850 pairs, 26,289 sentences: ~20 min per row on 2 cores, over 6 h for 20 rows); 300 per set
    # (2,100 pairs, 3,898 sentences) keeps the whole CPU run (20 evaluations) to about two and a half hours.
    eval_max_pairs: int | None = 300
    encode_batch_size: int | None = None
    smoke: bool = False

    @classmethod
    def smoke_settings(cls, **overrides) -> Settings:
        """The CI smoke: two seeds, one step of two triplets, a LoRA of rank 8, 4 pairs per STS task, 12 dev
        pairs."""
        base = dict(
            seeds=[42, 43],
            steps=1,
            batch_size=2,
            warmup_steps=1,
            lr=1e-3,
            lora_r=8,
            lora_alpha=16,
            max_examples=64,
            tp_pairs=12,
            eval_max_pairs=4,
            smoke=True,
        )
        base.update(overrides)
        return cls(**base)


PAPER_PRESET = dict(  # the paper's stage 1, on one GPU: 256 x grad-accum 32 = 8192 triplets per step
    dtype="bf16",
    eval_max_pairs=None,  # every pair: the paper protocol
    steps=None,
    epochs=3,
    batch_size=256,
    grad_accum=32,
    lr=2e-4,
    warmup_steps=80,
    lora_r=64,
    lora_alpha=128,
    lora_dropout=0.1,
    max_length=60,
    load_in_4bit=True,
    gradient_checkpointing=True,
)


# ---------------------------------------------------------------------------------------------- the run


class Run:
    """One run directory: settings, stage results, and the stages themselves."""

    def __init__(self, output: str | os.PathLike, settings: Settings, progress: bool = True):
        self.out = Path(output).expanduser()
        self.settings = settings
        self.progress = progress
        self.stages = self.out / "stages"

    # -- bookkeeping -------------------------------------------------------------------------------------
    def check_settings(self, write: bool = True) -> None:
        path = self.out / "settings.json"
        now = dataclasses.asdict(self.settings)
        if path.is_file():
            saved = json.loads(path.read_text())
            diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
            seeds_saved = saved.get("seeds") or []
            if "seeds" in diff and now["seeds"][: len(seeds_saved)] == seeds_saved:
                # more headline seeds extend a run: every finished stage stays valid (the first seed, which
                # the other arms use, is unchanged)
                del diff["seeds"]
                if not diff and write:
                    atomic_write_json(path, now)
            if diff:
                detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise ReproduceError(
                    f"{self.out} holds a run with other settings ({detail}); resume it with the "
                    "same options, "
                    "or pass another --output"
                )
        elif write:
            atomic_write_json(path, now)

    def done(self, name: str) -> dict | None:
        path = self.stages / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def stage(self, name: str, fn) -> dict:
        """Run ``fn() -> dict`` unless ``stages/<name>.json`` exists; record its wall time; write it
        atomically."""
        result = self.done(name)
        if result is not None:
            return result
        t0 = time.perf_counter()
        result = fn()
        result["seconds"] = time.perf_counter() - t0
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        atomic_write_json(self.stages / f"{name}.json", to_jsonable(result))
        return result

    # -- paths -------------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        if self.settings.data_dir:
            return Path(self.settings.data_dir)
        from bellm.models import default_data_dir

        return default_data_dir()

    @property
    def train_data(self) -> Path:
        path = (
            Path(self.settings.train_data)
            if self.settings.train_data
            else (self.data_dir / "nli" / "snli_devtest_triplets.tsv.gz")
        )
        if not path.is_file():
            raise ReproduceError(
                f"training data {str(path)!r} not found; pass --train-data (triplets .tsv.gz)"
            )
        return path

    def base(self) -> dict:
        return self.stage("base", self._materialise)

    def _materialise(self) -> dict:
        """A GGUF is loaded once (de-quantised to a regular fp32 model) and saved as safetensors (bitwise the
        same weights) so later loads take a second; a transformers directory is used in place."""
        from transformers import AutoConfig

        s = self.settings
        t0 = time.perf_counter()
        is_gguf = s.model is None or s.gguf_file is not None or str(s.model).endswith(".gguf")
        path = s.model
        params = None
        if is_gguf:
            from bellm.models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(
                s.model, gguf_file=s.gguf_file, dtype=s.dtype, device="cpu"
            )
            model.hf_quantizer = (
                None  # the de-quantised weights are plain tensors; let transformers save them
            )
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            params = int(sum(p.numel() for p in model.parameters()))
            target = self.out / "base_model"
            tmp = Path(tempfile.mkdtemp(prefix=".base_model.", dir=self.out))
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            path = str(target)
            del model
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return {
            "path": str(path),
            "source": s.model or "SmolLM2-135M-Instruct GGUF (bellm.models.default_model)",
            "architecture": (getattr(cfg, "architectures", None) or [cfg.model_type])[0],
            "num_layers": int(cfg.num_hidden_layers),
            "hidden_size": int(cfg.hidden_size),
            "heads": int(cfg.num_attention_heads),
            "kv_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
            "parameters": params,
            "first_load_seconds": time.perf_counter() - t0,
        }

    def load_encoder(self, from_layer: int, pooling: str = "last", adapter: str | None = None):
        s = self.settings
        return bellm.Encoder.from_pretrained(
            self.base()["path"],
            adapter=adapter,
            from_layer=from_layer,
            pooling=pooling,
            prompt=BELLM_PROMPT,
            dtype=s.dtype,
            device=s.device,
        )

    def train_config(self, name: str, from_layer: int, pooling: str, seed: int, **overrides):
        s = self.settings
        kw = dict(
            data=str(self.train_data),
            output_dir=str(self.out / "train" / name),
            model=self.base()["path"],
            from_layer=from_layer,
            pooling=pooling,
            prompt=BELLM_PROMPT,
            max_length=s.max_length,
            data_kind="triplets",
            max_examples=s.max_examples,
            lora_r=s.lora_r,
            lora_alpha=s.lora_alpha,
            lora_dropout=s.lora_dropout,
            batch_size=s.batch_size,
            grad_accum=s.grad_accum,
            epochs=s.epochs,
            max_steps=s.steps,
            lr=s.lr,
            warmup_steps=s.warmup_steps,
            seed=seed,
            dtype=s.dtype,
            load_in_4bit=s.load_in_4bit,
            gradient_checkpointing=s.gradient_checkpointing,
            device=s.device,
            save_steps=max(1, min(25, (s.steps or 10**9) // 4)) if not s.smoke else 0,
            save_total_limit=2,
            resume=True,
            progress=self.progress,
        )
        kw.update(overrides)
        return TrainConfig(**kw)

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate(self, name: str, encoder) -> dict:
        """:func:`bellm.evaluate_sts` on the seven sets, with embeddings persisted so a kill loses little."""
        cached = _PersistentEncoder(encoder, self.out / "cache" / f"{name}.npz")
        result = bellm.evaluate_sts(
            cached,
            data_dir=self.data_dir,
            batch_size=self.settings.encode_batch_size,
            max_pairs=self.settings.eval_max_pairs,
            show_progress_bar=self.progress,
        )
        cached.flush()
        result["encoder"] = encoder.config_dict()
        return result

    def eval_sentences(self) -> list[str]:
        """The unique (whitespace-normalised) sentences :func:`bellm.evaluate_sts` encodes, for the plan."""
        seen: dict[str, None] = {}
        for t in TASKS:
            pairs = load_sts(t, "test", data_dir=self.data_dir).sample(self.settings.eval_max_pairs, 0)
            for sent in pairs.sentences1 + pairs.sentences2:
                seen[normalize_whitespace(sent)] = None
        return list(seen)

    # -- the design (arms) -------------------------------------------------------------------------------
    def design(self) -> dict:
        tp = self.done("turning_point")
        if tp is None:
            raise ReproduceError("the turning point stage has not run yet; run without --report first")
        return tp["design"]

    def untrained_rows(self, d: dict) -> list[dict]:
        L, k = d["num_layers"], d["k_bellm"]
        return [
            {
                "name": "causal",
                "label": "causal (no bidirectional layer)",
                "from_layer": L,
                "pooling": "last",
            },
            {
                "name": "identity-last",
                "label": f"from_layer=-1 ({L - 1}), last pooling: identity",
                "from_layer": L - 1,
                "pooling": "last",
            },
            {
                "name": f"bellm-k{k}",
                "label": f"BeLLM, bidirectional from k={k}",
                "from_layer": k,
                "pooling": "last",
            },
            {
                "name": "all-bidirectional",
                "label": "all bidirectional (from_layer=0)",
                "from_layer": 0,
                "pooling": "last",
            },
            {
                "name": "causal-mean",
                "label": "causal, mean pooling",
                "from_layer": L,
                "pooling": "mean",
            },
            {
                "name": "last-layer-mean",
                "label": f"from_layer=-1 ({L - 1}), mean pooling",
                "from_layer": L - 1,
                "pooling": "mean",
            },
        ]

    def arms(self, d: dict) -> list[dict]:
        L, k, kq = d["num_layers"], d["k_bellm"], d["k_quarter"]
        seeds, first = self.settings.seeds, self.settings.seeds[:1]
        return [
            {"name": "causal", "label": "causal", "from_layer": L, "pooling": "last", "seeds": seeds},
            {
                "name": f"bellm-k{k}",
                "label": f"BeLLM, bidirectional from k={k}",
                "from_layer": k,
                "pooling": "last",
                "seeds": seeds,
            },
            {
                "name": f"bidir-k{kq}",
                "label": f"bidirectional from k={kq} (second depth)",
                "from_layer": kq,
                "pooling": "last",
                "seeds": first,
            },
            {
                "name": "all-bidirectional",
                "label": "all bidirectional (from_layer=0)",
                "from_layer": 0,
                "pooling": "last",
                "seeds": first,
            },
            {
                "name": "last-layer-mean",
                "label": f"from_layer=-1 ({L - 1}), mean pooling",
                "from_layer": L - 1,
                "pooling": "mean",
                "seeds": first,
            },
            {  # the control that isolates the last layer's bidirectionality in the arm above
                "name": "causal-mean",
                "label": "causal, mean pooling (control)",
                "from_layer": L,
                "pooling": "mean",
                "seeds": first,
            },
        ]

    # -- stages ------------------------------------------------------------------------------------------
    def turning_point(self) -> dict:
        def run() -> dict:
            from bellm.models import load_model_and_tokenizer

            s = self.settings
            model, tokenizer = load_model_and_tokenizer(self.base()["path"], dtype=s.dtype, device=s.device)
            result = bellm.find_turning_point(
                model,
                tokenizer,
                pooling="last",
                layer_norm="final",
                max_pairs=s.tp_pairs,
                data_dir=self.data_dir,
                show_progress_bar=self.progress,
            )
            d = choose_depths(result.scores, result.turning_point, result.num_layers)
            L = d["num_layers"]
            ks = sorted(
                {0, L // 2, d["k_quarter"], d["k_bellm"], L - 1, L} if not s.smoke else {d["k_bellm"], L}
            )
            result.sweep = bellm.sweep_from_layer(
                model,
                tokenizer,
                from_layers=ks,
                pooling="last",
                max_pairs=s.tp_pairs,
                data_dir=self.data_dir,
                batch_size=s.encode_batch_size,
                show_progress_bar=self.progress,
            )
            json_path, png_path = result.save(self.out / "turning_point")
            return {"curve": result.to_dict(), "design": d, "json": str(json_path), "png": str(png_path)}

        return self.stage("turning_point", run)

    def plan(self) -> dict:
        return self.stage("plan", self._measure)

    def _measure(self) -> dict:
        """Measured throughput: encode (sentences/s on a spread of evaluation sentences) and train
        (s/step)."""
        from tqdm.auto import tqdm

        s = self.settings
        sentences = self.eval_sentences()
        by_len = sorted(sentences, key=len)
        n = min(len(by_len), 8 if s.smoke else 256)
        sample = [by_len[int(i)] for i in np.linspace(0, len(by_len) - 1, n)]
        t0 = time.perf_counter()
        encoder = self.load_encoder(self.base()["num_layers"])
        load_s = time.perf_counter() - t0
        encoder.encode(sample[:4], show_progress_bar=False)  # warm-up
        t0 = time.perf_counter()
        encoder.encode(sample, show_progress_bar=False, batch_size=s.encode_batch_size)
        rate = n / (time.perf_counter() - t0)
        mean_sentences = float(np.mean([len(x) for x in sentences]))
        sample_mean = float(np.mean([len(x) for x in sample]))
        rate *= sample_mean / mean_sentences  # the sample's length mix differs slightly from the whole
        del encoder
        steps = 1 if s.smoke else 3
        with tempfile.TemporaryDirectory(dir=self.out) as tmp:
            config = self.train_config(
                "plan",
                self.base()["num_layers"],
                "last",
                self.settings.seeds[0],
                output_dir=tmp,
                max_steps=steps,
                save_steps=0,
                warmup_steps=0,
                progress=False,
                resume=False,
            )
            tqdm.write(f"plan: timing {steps} training steps (batch {s.batch_size} x accum {s.grad_accum})")
            t0 = time.perf_counter()
            train_arm(config)
            train_wall = time.perf_counter() - t0
            log = [json.loads(line) for line in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
        tok_s = [r["tokens_per_s"] for r in log if "tokens_per_s" in r][-1]
        per_step_tokens = self._tokens_per_step()
        step_s = per_step_tokens / tok_s if tok_s else train_wall / steps
        return {
            "encode_sentences_per_s": rate,
            "encode_sample": n,
            "model_load_s": load_s,
            "train_seconds_per_step": step_s,
            "train_tokens_per_step": per_step_tokens,
            "train_tokens_per_s": tok_s,
            "train_setup_s": max(0.0, train_wall - steps * step_s),
            "eval_unique_sentences": len(sentences),
            "cpu_threads": _threads(),
        }

    def _tokens_per_step(self) -> float:
        from transformers import AutoTokenizer

        from bellm.train_data import prompt_token_ids, read_train_data

        s = self.settings
        tok = AutoTokenizer.from_pretrained(self.base()["path"], local_files_only=True)
        data = read_train_data(self.train_data, "triplets", s.max_examples or 512)
        lengths = [
            len(ids)
            for col in data.texts
            for ids in prompt_token_ids(tok, col[:512], BELLM_PROMPT, s.max_length)
        ]
        return float(np.mean(lengths)) * 3 * s.batch_size * s.grad_accum

    def estimate(self) -> dict:
        """Seconds per remaining stage, from the measured plan (done stages count 0)."""
        p = self.plan()
        L = self.base()["num_layers"]
        tp_unique = 2 * (self.settings.tp_pairs or 1500) * 0.97
        eval_s = p["eval_unique_sentences"] / p["encode_sentences_per_s"] + p["model_load_s"] + 2
        train_s = self.total_steps() * p["train_seconds_per_step"] + p["train_setup_s"]
        rows = {"turning_point": (tp_unique * 2.0 + 6 * tp_unique) / p["encode_sentences_per_s"] + 20}
        d = self.done("turning_point")
        design = d["design"] if d else choose_depths([0.0] * (L + 1), L - 2, L)  # a same-sized placeholder
        for r in self.untrained_rows(design):
            rows[f"untrained-{r['name']}"] = eval_s
        for a in self.arms(design):
            for seed in a["seeds"]:
                rows[f"train-{a['name']}-seed{seed}"] = train_s
                rows[f"eval-{a['name']}-seed{seed}"] = eval_s + 5
        if d is None:  # the placeholder's names may differ from the real ones: count, do not match
            return {"stages": rows, "remaining_s": sum(rows.values()), "total_s": sum(rows.values())}
        remaining = {k: (0.0 if self.done(k) else v) for k, v in rows.items()}
        return {"stages": rows, "remaining_s": sum(remaining.values()), "total_s": sum(rows.values())}

    def total_steps(self) -> int:
        s = self.settings
        if s.steps:
            return s.steps
        from bellm.train_data import read_train_data

        n = len(read_train_data(self.train_data, "triplets", s.max_examples))
        return max(1, s.epochs * (n // s.batch_size) // s.grad_accum)

    def run_all(self) -> None:
        from tqdm.auto import tqdm

        self.base()
        est = self.estimate()
        tqdm.write(format_plan(self, est))
        tp = self.turning_point()
        d = tp["design"]
        tqdm.write(
            f"turning point: layer {d['turning_point']} of {d['num_layers']}; k = {d['k_bellm']} "
            f"({d['k_rule']}); second depth k = {d['k_quarter']}"
        )
        jobs = []
        for r in self.untrained_rows(d):
            jobs.append((f"untrained-{r['name']}", lambda r=r: self._eval_untrained(r)))
        for a in self.arms(d):
            for seed in a["seeds"]:
                jobs.append((f"train-{a['name']}-seed{seed}", lambda a=a, seed=seed: self._train(a, seed)))
                jobs.append(
                    (f"eval-{a['name']}-seed{seed}", lambda a=a, seed=seed: self._eval_trained(a, seed))
                )
        est = self.estimate()["stages"]
        todo = [(n, f) for n, f in jobs if self.done(n) is None]
        total = sum(est.get(n, 60.0) for n, _ in todo)
        with tqdm(
            total=round(total),
            unit="s",
            desc="reproduce (est. seconds of work)",
            disable=not self.progress,
            position=0,
            dynamic_ncols=True,
        ) as bar:
            for name, fn in todo:
                bar.set_postfix_str(name)
                self.stage(name, fn)
                bar.update(round(est.get(name, 60.0)))

    def _eval_untrained(self, row: dict) -> dict:
        result = self.evaluate(
            f"untrained-{row['name']}", self.load_encoder(row["from_layer"], row["pooling"])
        )
        return {"row": row, **result}

    def _train(self, arm: dict, seed: int) -> dict:
        config = self.train_config(f"{arm['name']}-seed{seed}", arm["from_layer"], arm["pooling"], seed)
        result = train_arm(config)
        return {"arm": arm, "seed": seed, "train": result, "config": dataclasses.asdict(config)}

    def _eval_trained(self, arm: dict, seed: int) -> dict:
        adapter = self.done(f"train-{arm['name']}-seed{seed}")["train"]["output_dir"]
        encoder = self.load_encoder(arm["from_layer"], arm["pooling"], adapter=adapter)
        result = self.evaluate(f"eval-{arm['name']}-seed{seed}", encoder)
        return {"arm": arm, "seed": seed, "adapter": adapter, **result}


def choose_depths(scores: list[float], turning_point: int | None, num_layers: int) -> dict:
    """``k`` for BeLLM and the second depth, from the per-layer curve (see the module doc for the rule)."""
    L = num_layers
    if turning_point is None:
        raise ReproduceError("every layer's STS score is undefined; the turning point cannot be chosen")
    if turning_point <= L - 2:
        k, rule = turning_point, "the turning point (best dev layer)"
    else:
        below = np.asarray(scores[: L - 1], dtype=np.float64)
        if not np.isfinite(below).any():
            raise ReproduceError("no defined STS score below layer L-1; cannot choose k")
        k = int(np.nanargmax(below))
        rule = (
            f"the turning point is layer {turning_point} >= L-1, where bidirectionality cannot change a "
            f"last-token embedding (docs/bidirectional.md, section 1); k = the best dev layer among 0..{L - 2}"
        )
    kq, qrule = L - L // 4, "upper quarter of the layers (L - L//4)"
    if kq == k:
        kq, qrule = L - L // 2, f"upper half (L - L//2), because the upper quarter {L - L // 4} equals k"
    return {
        "num_layers": L,
        "turning_point": turning_point,
        "k_bellm": k,
        "k_rule": rule,
        "k_quarter": kq,
        "k_quarter_rule": qrule,
    }


class _PersistentEncoder:
    """Wraps an encoder for :func:`bellm.evaluate_sts`: every embedding is kept in ``path`` (``.npz``, written
    atomically at most every ``every_s`` seconds and at the end), so a killed evaluation resumes where it
    was."""

    def __init__(self, encoder, path: Path, every_s: float = 120.0):
        self.encoder, self.path, self.every_s = encoder, Path(path), every_s
        self.cache: dict[str, np.ndarray] = {}
        if self.path.is_file():
            self.cache = read_embedding_cache(self.path)
        self._saved = time.monotonic()
        self._dirty = False

    def encode(self, sentences: list[str], **kwargs) -> np.ndarray:
        missing = [x for x in dict.fromkeys(sentences) if x not in self.cache]
        if missing:
            emb = np.asarray(self.encoder.encode(missing, **kwargs), dtype=np.float32)
            self.cache.update(zip(missing, emb))
            self._dirty = True
            if time.monotonic() - self._saved > self.every_s:
                self.flush()
        return np.stack([self.cache[x] for x in sentences])

    def flush(self) -> None:
        if not self._dirty:
            return
        keys = list(self.cache)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez(f, sentences=np.array(keys), embeddings=np.stack([self.cache[k] for k in keys]))
        self._saved, self._dirty = time.monotonic(), False


def read_embedding_cache(path: Path) -> dict[str, np.ndarray]:
    """``{sentence: embedding}`` from an evaluation's ``cache/<name>.npz`` (see :class:`_PersistentEncoder`)."""
    with np.load(path) as z:
        return dict(zip(z["sentences"].tolist(), z["embeddings"]))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------------- report


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def format_plan(run: Run, est: dict) -> str:
    p, s = run.plan(), run.settings
    lines = [
        f"bellm reproduce: {run.out}" + ("  [SMOKE]" if s.smoke else ""),
        f"  measured: encode {p['encode_sentences_per_s']:.1f} sentences/s, train "
        f"{p['train_seconds_per_step']:.2f} "
        f"s/step (batch {s.batch_size} x accum {s.grad_accum} triplets, "
        f"{p['train_tokens_per_s']:.0f} tokens/s), "
        f"{p['cpu_threads']} torch threads",
        f"  {p['eval_unique_sentences']} unique sentences per 7-set evaluation; {run.total_steps()} "
        "steps per arm",
    ]
    groups: dict[str, float] = {}
    for name, sec in est["stages"].items():
        key = name.split("-")[0]
        groups[key] = groups.get(key, 0.0) + sec
    for key, sec in groups.items():
        lines.append(f"    {key:<14} {_hms(sec):>8}")
    lines.append(f"  estimated full run: {_hms(est['total_s'])}; remaining: {_hms(est['remaining_s'])}")
    return "\n".join(lines)


def _row(name: str, scores: dict, average) -> str:
    return "| " + " | ".join([name, *(_fmt(scores.get(t)) for t in TASKS), _fmt(average)]) + " |"


def _table_head(first: str = "") -> list[str]:
    return [
        "| " + " | ".join([first, *(SHORT.get(t, t) for t in TASKS), "Avg."]) + " |",
        "|" + "|".join(["---"] * (len(TASKS) + 2)) + "|",
    ]


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "peft", "triton", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    out["bellm"] = bellm.__version__
    try:
        out["bellm_commit"] = (
            subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "?"
        )
    except (OSError, subprocess.SubprocessError):
        out["bellm_commit"] = "?"
    return out


def turning_point_reading(tp: dict) -> list[str]:
    """Claim (a) in one sentence, from the curve of the untrained causal model."""
    d, curve = tp["design"], tp["curve"]
    t, L = d["turning_point"], d["num_layers"]
    scores, drop = curve["scores"], curve.get("drop_after_turning_point") or 0.0
    if t >= L or drop <= 0:
        return [
            f"**Claim (a) does not hold here**: the per-layer curve peaks at the last layer ({L}); there is no "
            "turning point inside the stack.",
            "",
        ]
    return [
        f"**Claim (a) holds at this scale**: the per-layer STS curve of the untrained causal model peaks at layer "
        f"{t} ({_fmt(scores[t])}) and falls by {drop:.2f} points to the last layer ({L}: {_fmt(scores[L])}), "
        "on STS-B dev.",
        "",
    ]


def reading(headline: dict) -> list[str]:
    """The automatically worded reading of the headline comparison (BeLLM - causal, per seed)."""
    deltas = headline["deltas"]
    if not deltas:
        return ["The headline comparison is not complete yet (a causal or BeLLM seed is missing)."]
    mean = float(np.mean(deltas))
    spread = headline["causal_spread"]
    lo, hi = min(deltas), max(deltas)
    n = len(deltas)
    if all(d > 0 for d in deltas):
        verdict = (
            "**The direction of the paper's claim holds at this scale**: BeLLM beats causal on the "
            "average in "
            f"all {n} seed(s)"
        )
    elif mean > 0:
        verdict = (
            f"**The direction is not consistent**: BeLLM is ahead on the average over seeds but not in every "
            f"seed ({sum(d > 0 for d in deltas)} of {n})"
        )
    else:
        verdict = (
            "**The direction of the paper's claim does not hold at this scale**: BeLLM is not "
            "ahead of causal "
            f"on the average ({sum(d > 0 for d in deltas)} of {n} seeds ahead)"
        )
    lines = [
        f"{verdict}; BeLLM - causal = {mean:+.2f} points on the 7-set average (per seed: "
        f"{', '.join(f'{d:+.2f}' for d in deltas)}; range {lo:+.2f} to {hi:+.2f}). The paper reports "
        f"{PAPER_DELTA:+.2f} (86.29 vs 85.96, LLaMA-2-7B, a different training run per model)."
    ]
    if spread is not None and n >= 2:
        size = "larger than" if abs(mean) > spread else "within"
        lines.append(
            f"The seed-to-seed spread of the causal arm's average is {spread:.2f} points (max - min over "
            f"{n} seeds); the mean difference is {size} that spread. The comparison is paired, though: both "
            "arms of a seed share the data order and the LoRA initialisation, so the per-seed differences "
            "below are the relevant noise, not the spread."
        )
    elif n < 2:
        lines.append(
            "Only one seed is complete, so there is no seed-to-seed spread yet; treat the difference as "
            "unmeasured noise."
        )
    if n >= 2:
        sd = float(np.std(deltas, ddof=1))
        se = sd / math.sqrt(n)
        lines.append(
            f"Per-seed differences: standard deviation {sd:.2f}, standard error of the mean {se:.2f} ({n} "
            f"seeds): mean {mean:+.2f} +- {se:.2f}."
        )
    k, L = headline.get("k"), headline.get("num_layers")
    if k is not None and L is not None:
        acting = L - k - 1
        lines.append(
            f"Why the difference can only be small here: BeLLM makes layers {k}..{L - 1} bidirectional; with "
            f"last-token pooling the last of them cannot change the embedding ({DOC}, section 1), so only "
            f"{acting} layer(s) of {L} can act on it."
        )
    boot = headline.get("bootstrap")
    if boot:
        pairs = f"{boot['pairs_per_task']} sampled pairs per set" if boot["pairs_per_task"] else "every pair"
        inside = boot["lo"] <= 0.0 <= boot["hi"]
        lines.append(
            f"Test-pair sampling ({pairs}): a paired bootstrap over the evaluated pairs ({boot['n_boot']} "
            f"resamples, the same pairs for both arms and every seed) puts the mean difference between "
            f"{boot['lo']:+.2f} and {boot['hi']:+.2f} (95%); {100 * boot['share_le_0']:.1f}% of resamples are "
            f"<= 0, so the difference is {'not ' if inside else ''}distinguishable from zero by the choice of "
            "test pairs alone (seed noise comes on top). The paper's difference, "
            f"{PAPER_DELTA:+.2f}, lies {'inside' if boot['lo'] <= PAPER_DELTA <= boot['hi'] else 'outside'} "
            "that interval."
        )
    return lines


def headline_numbers(run: Run, d: dict) -> dict:
    causal, bellm_ = {}, {}
    for seed in run.settings.seeds:
        c, b = run.done(f"eval-causal-seed{seed}"), run.done(f"eval-bellm-k{d['k_bellm']}-seed{seed}")
        if c is not None:
            causal[seed] = c["average"]
        if b is not None:
            bellm_[seed] = b["average"]
    paired = [
        s
        for s in run.settings.seeds
        if s in causal and s in bellm_ and causal[s] is not None and bellm_[s] is not None
    ]
    vals = [v for v in causal.values() if v is not None]
    return {
        "causal": causal,
        "bellm": bellm_,
        "k": d["k_bellm"],
        "num_layers": d["num_layers"],
        "seeds": paired,
        "deltas": [bellm_[s] - causal[s] for s in paired],
        "causal_spread": (max(vals) - min(vals)) if len(vals) >= 2 else None,
    }


def _row_spearman(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Spearman of every row of ``pred`` with the same row of ``gold`` (both ``(B, n)``); nan where undefined."""
    from scipy.stats import rankdata

    rp, rg = rankdata(pred, axis=1), rankdata(gold, axis=1)
    rp -= rp.mean(axis=1, keepdims=True)
    rg -= rg.mean(axis=1, keepdims=True)
    denom = np.sqrt((rp**2).sum(axis=1) * (rg**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rp * rg).sum(axis=1) / denom, np.nan)


def pair_bootstrap(run: Run, d: dict, seeds: list[int], n_boot: int = 1000, rng_seed: int = 0) -> dict | None:
    """Uncertainty of the headline difference from *which pairs* were evaluated (a paired bootstrap).

    The evaluated pairs of every task are resampled with replacement ``n_boot`` times; each resample scores
    causal and BeLLM of every seed in ``seeds`` on the *same* pairs, from the embeddings each evaluation
    persisted (``cache/eval-<arm>-seed<s>.npz``). The statistic is the mean over seeds of the 7-set average
    difference, as in the reading. Returns its 2.5 / 97.5 percentiles and the share of resamples <= 0, or None
    when a cache is missing (e.g. deleted after the run). This is the sampling noise of the test pairs (large
    with ``--eval-max-pairs``); the seed-to-seed spread is separate.
    """
    from bellm.evaluate import cosine_rows

    if not seeds:
        return None
    arms = {"causal": -1.0, f"bellm-k{d['k_bellm']}": 1.0}
    caches = {}
    for seed in seeds:
        for arm in arms:
            path = run.out / "cache" / f"eval-{arm}-seed{seed}.npz"
            if not path.is_file():
                return None
            caches[arm, seed] = read_embedding_cache(path)
    rng = np.random.default_rng(rng_seed)
    total = np.zeros(n_boot)
    for task in TASKS:
        pairs = load_sts(task, "test", data_dir=run.data_dir).sample(run.settings.eval_max_pairs, 0)
        s1 = [normalize_whitespace(x) for x in pairs.sentences1]  # the keys evaluate_sts encoded under
        s2 = [normalize_whitespace(x) for x in pairs.sentences2]
        gold = np.asarray(pairs.scores, dtype=np.float64)
        idx = rng.integers(0, len(gold), size=(n_boot, len(gold)))  # the same resamples for every arm
        for (arm, _seed), cache in caches.items():
            cos = cosine_rows(np.stack([cache[x] for x in s1]), np.stack([cache[x] for x in s2]))
            rho = _row_spearman(cos[idx], gold[idx]) * 100.0
            total += arms[arm] * rho / (len(seeds) * len(TASKS))
    finite = total[np.isfinite(total)]
    if finite.size == 0:
        return None
    return {
        "n_boot": int(n_boot),
        "lo": float(np.percentile(finite, 2.5)),
        "hi": float(np.percentile(finite, 97.5)),
        "share_le_0": float(np.mean(finite <= 0)),
        "seeds": list(seeds),
        "pairs_per_task": run.settings.eval_max_pairs,
    }


def write_report(run: Run, path: Path | None = None) -> Path:
    """RESULTS.md (and its assets) from the stage JSON files; works on a partial run."""
    path = Path(path) if path else run.out / "RESULTS.md"
    s = run.settings
    base, plan, tp = run.done("base"), run.done("plan"), run.done("turning_point")
    lines = ["# BeLLM reproduction: results", ""]
    if s.smoke:
        lines += [
            f"> **SMOKE RUN — these numbers mean nothing.** {s.steps} training step(s) of {s.batch_size} "
            f"triplets, {s.eval_max_pairs} pairs per STS set, {s.tp_pairs} dev pairs for the curve: this checks "
            "that the pipeline runs end to end, not the paper's claim.",
            "",
        ]
    status = _status(run)
    lines += [
        f"Status: {status['done']} of {status['total']} stages done"
        + (
            "" if status["done"] == status["total"] else " (**partial run**: the missing rows read 'not run')"
        ),
        "",
    ]
    lines += [
        "Generated by `experiments/reproduce.py` from the JSON files in its run directory; no number here is "
        "typed by hand.",
        "",
    ]
    if base:
        lines += [
            f"Model: {base['source']} ({base['architecture']}, {base['num_layers']} layers, hidden "
            f"{base['hidden_size']}, {base['heads']} heads / {base['kv_heads']} KV heads, "
            f"{format(base['parameters'], ',') if base['parameters'] else '?'} parameters).",
            "",
        ]
    if tp:
        d, curve = tp["design"], tp["curve"]
        asset_dir = path.parent / "results_assets"
        asset_dir.mkdir(parents=True, exist_ok=True)
        png = asset_dir / "turning_point.png"
        shutil.copyfile(tp["png"], png)
        data = curve.get("data", {})
        lines += [
            "## 1. Turning point of the untrained model",
            "",
            f"![per-layer STS curve](results_assets/{png.name})",
            "",
            f"Per-layer Spearman x 100 on {data.get('task')} {data.get('split')} ({data.get('pairs')} pairs, "
            f"{data.get('source')} text), last-token pooling under the BeLLM prompt, causal model "
            "in one pass; "
            f"norm treatment: {curve.get('layer_norm_meaning')}. Undefined points (constant embeddings, e.g. "
            "layer 0: the last token is always the closing quote) are gaps.",
            "",
            f"- turning point: layer **{d['turning_point']}** of {d['num_layers']} (drop after it: "
            f"{_fmt(curve.get('drop_after_turning_point'))} points)",
            f"- BeLLM's k = **{d['k_bellm']}**: {d['k_rule']}",
            f"- second depth k = **{d['k_quarter']}**: {d['k_quarter_rule']}",
            "",
        ]
        scores = curve["scores"]
        lines += [
            "| layer | " + " | ".join(str(i) for i in range(len(scores))) + " |",
            "|---|" + "---|" * len(scores),
            "| Spearman | " + " | ".join(_fmt(x) for x in scores) + " |",
            "",
        ]
        if curve.get("sweep"):
            sweep = curve["sweep"]
            lines += [
                "Untrained sweep, final embedding with layers >= k bidirectional (same dev pairs):",
                "",
                "| from_layer k | " + " | ".join(sweep) + " |",
                "|---|" + "---|" * len(sweep),
                "| Spearman | " + " | ".join(_fmt(v) for v in sweep.values()) + " |",
                "",
            ]
        lines += _tables(run, d)
        headline = headline_numbers(run, d)
        headline["bootstrap"] = pair_bootstrap(run, d, headline["seeds"])
        paragraphs = [x for line in reading(headline) for x in (line, "")]  # one paragraph per statement
        lines += ["## 4. Reading", ""] + turning_point_reading(tp) + paragraphs
        lines += _other_readings(run, d) + [""]
    lines += [
        "## Setup",
        "",
        f"- Training data: `{run.train_data.name}` (real SNLI dev+test triplets; STS-B train pairs "
        "not added: "
        "the paper trains on NLI only and STS-B is an evaluation task). Same data, steps, batch, "
        "LoRA, learning "
        "rate and seed for every arm.",
        f"- Budget per arm: {run.total_steps()} optimizer steps x {s.batch_size} triplets x grad-accum "
        f"{s.grad_accum}; lr {s.lr}, warmup {s.warmup_steps}, linear decay; LoRA r {s.lora_r}, alpha "
        f"{s.lora_alpha}, dropout {s.lora_dropout} on every linear layer; AnglE loss ibn_w 20, angle_w 1, "
        f"cosine_w 0 (the paper's stage 1); max_length {s.max_length}; seeds {s.seeds} (headline pair), "
        f"{s.seeds[0]} (other arms).",
        "- Evaluation: `bellm.evaluate_sts`, the paper protocol: Spearman x 100 of cosine "
        "similarity, SentEval "
        "text, STS12-16 all subsets pooled, STS-B and SICK-R test split"
        + (f"; **only {s.eval_max_pairs} sampled pairs per set**" if s.eval_max_pairs else "")
        + ".",
        "",
    ]
    lines += ["## Commands, versions, wall time", ""]
    cmds = (
        json.loads((run.out / "commands.json").read_text()) if (run.out / "commands.json").is_file() else []
    )
    lines += ["```"] + [c["command"] for c in cmds[-5:]] + ["```", ""]
    versions = _versions()
    lines += ["- " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    if plan:
        lines += [
            f"- Throughput measured by the plan stage: encode {plan['encode_sentences_per_s']:.1f} "
            "sentences/s, "
            f"train {plan['train_seconds_per_step']:.2f} s/step ({plan['cpu_threads']} torch threads)"
        ]
    wall = sum((run.done(n) or {}).get("seconds", 0.0) for n in status["names"])
    lines += [f"- Wall time of the stages done: {_hms(wall)} (sum of stage times, across sittings)", ""]
    atomic_write_text(path, "\n".join(lines))
    return path


def _tables(run: Run, d: dict) -> list[str]:
    lines = ["## 2. Untrained model (no training)", ""] + _table_head()
    for r in run.untrained_rows(d):
        res = run.done(f"untrained-{r['name']}")
        lines.append(
            _row(r["label"], res["scores"], res["average"]) if res else f"| {r['label']} | not run |"
        )
    lines += ["", "## 3. Trained arms (same data, steps, LoRA, seed)", ""] + _table_head()
    for a in run.arms(d):
        per_seed = []
        for seed in a["seeds"]:
            res = run.done(f"eval-{a['name']}-seed{seed}")
            if res is None:
                lines.append(f"| {a['label']}, seed {seed} | not run |")
                continue
            per_seed.append(res)
            lines.append(_row(f"{a['label']}, seed {seed}", res["scores"], res["average"]))
        if len(per_seed) >= 2:
            mean = {
                t: float(np.mean([r["scores"][t] for r in per_seed]))
                if all(r["scores"][t] is not None for r in per_seed)
                else None
                for t in TASKS
            }
            avgs = [r["average"] for r in per_seed]
            avg = float(np.mean(avgs)) if all(v is not None for v in avgs) else None
            lines.append(_row(f"**{a['label']}, mean of {len(per_seed)} seeds**", mean, avg))
    lines += [
        "",
        "For scale only (LLaMA-2-7B, full AllNLI, 4 GPUs; the BeLLM paper), not comparable in size or data:",
        "",
    ] + _table_head()
    for name, vals in PAPER_ROWS.items():
        lines.append("| " + " | ".join([name, *(f"{v:.2f}" for v in vals)]) + " |")
    return lines + [""]


def _other_readings(run: Run, d: dict) -> list[str]:
    out = []
    c, i = run.done("untrained-causal"), run.done("untrained-identity-last")
    if c and i:
        diffs = [
            abs(c["scores"][t] - i["scores"][t])
            for t in TASKS
            if c["scores"][t] is not None and i["scores"][t] is not None
        ]
        if diffs:
            out.append(
                f"- Identity ({DOC}, section 1): `from_layer=-1` with last-token pooling differs from "
                "causal by at "
                f"most {max(diffs):.4f} points on any set, so it is the causal model and is not "
                "trained as an "
                "arm."
            )
    ub, ua = run.done("untrained-all-bidirectional"), run.done(f"untrained-bellm-k{d['k_bellm']}")
    if c and ub and ub["average"] is not None and c["average"] is not None:
        out.append(
            f"- Untrained, all-bidirectional averages {_fmt(ub['average'])} vs causal {_fmt(c['average'])}; "
            f"bidirectional from k={d['k_bellm']}: {_fmt(ua['average']) if ua else 'not run'} "
            f"({DOC}, section 4: without training, bidirectionality low in the stack destroys "
            "the embedding)."
        )
    cm, lm = run.done("untrained-causal-mean"), run.done("untrained-last-layer-mean")
    if cm and lm and cm["average"] is not None and lm["average"] is not None:
        out.append(
            f"- Untrained, mean pooling: last layer bidirectional {_fmt(lm['average'])} vs causal "
            f"{_fmt(cm['average'])} ({lm['average'] - cm['average']:+.2f}): the last layer's bidirectionality "
            "alone, where the pooling can see it."
        )
    seed = run.settings.seeds[0]
    tc = run.done(f"eval-causal-seed{seed}")
    for arm in run.arms(d)[2:]:
        r = run.done(f"eval-{arm['name']}-seed{seed}")
        if tc and r and r["average"] is not None and tc["average"] is not None:
            caveat = ""
            control = run.done(f"eval-causal-mean-seed{seed}")
            if arm["name"] == "last-layer-mean" and control and control["average"] is not None:
                caveat = (
                    f"; against the causal mean-pooling control {_fmt(control['average'])}: "
                    f"{r['average'] - control['average']:+.2f}, the last layer's bidirectionality alone"
                )
            elif arm["pooling"] != "last":
                caveat = "; the pooling differs too (mean, not last token)"
            out.append(
                f"- Trained, {arm['label']}: {_fmt(r['average'])} vs causal {_fmt(tc['average'])} "
                f"({r['average'] - tc['average']:+.2f}, seed {seed}, one seed: no spread{caveat})."
            )
    return out


def _status(run: Run) -> dict:
    names = ["base", "plan", "turning_point"]
    tp = run.done("turning_point")
    if tp:
        d = tp["design"]
        names += [f"untrained-{r['name']}" for r in run.untrained_rows(d)]
        for a in run.arms(d):
            for seed in a["seeds"]:
                names += [f"train-{a['name']}-seed{seed}", f"eval-{a['name']}-seed{seed}"]
    total = len(names) if tp else len(names) + 4 + 2 * (2 * len(run.settings.seeds) + 3)
    return {"names": names, "done": sum(run.done(n) is not None for n in names), "total": total}


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars (CI logs)")
    return p


def settings_from_args(args) -> Settings:
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
        )
        if getattr(args, k) is not None
    }
    if args.preset == "paper":
        overrides = {**PAPER_PRESET, **overrides}
    if overrides.get("eval_max_pairs") == 0:
        overrides["eval_max_pairs"] = None  # every pair
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
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = settings_from_args(args)
        run = Run(args.output, settings, progress=not args.no_progress)
        if args.report:
            if not (run.out / "settings.json").is_file():
                raise ReproduceError(f"{run.out} holds no run (no settings.json); pass the run's --output")
            run.settings = Settings(**json.loads((run.out / "settings.json").read_text()))
        else:
            run.out.mkdir(parents=True, exist_ok=True)
            run.check_settings()
            _record_command(run)
            run.base()
            if args.plan:
                print(format_plan(run, run.estimate()))
                return 0
            run.run_all()
    except ReproduceError as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return 2
    path = write_report(run)
    print(f"wrote {path}")
    if args.results_md:
        extra = write_report(run, Path(args.results_md))
        print(f"wrote {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
