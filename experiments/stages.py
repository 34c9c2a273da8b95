"""The run directory and its stages: each stage writes ``<output>/stages/<name>.json`` atomically when it
finishes and is skipped when that file exists (see :mod:`experiments` for the list)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import bellm
from bellm._io import atomic_path, atomic_write_json
from bellm.common import BELLM_PROMPT, normalize_whitespace
from bellm.evaluate import to_jsonable
from bellm.sts_data import TASKS, load_sts
from experiments.settings import ReproduceError, Settings

try:
    import fcntl
except ImportError:  # Windows: no stage locks (one process per run directory)
    fcntl = None

__all__ = ["Run", "choose_depths", "read_embedding_cache"]


class Run:
    """One run directory: settings, stage results, and the stages themselves."""

    def __init__(self, output: str | os.PathLike, settings: Settings, progress: bool = True):
        self.out = Path(output).expanduser().absolute()  # stage JSONs store paths relative to it
        self.settings = settings
        self.progress = progress
        self.stages = self.out / "stages"
        self._held: dict = {}  # stage name -> its open lock file, while this process runs it

    # -- bookkeeping -------------------------------------------------------------------------------------
    def check_settings(self, write: bool = True) -> None:
        path = self.out / "settings.json"
        now = dataclasses.asdict(self.settings)
        if path.is_file():
            saved = dataclasses.asdict(Settings.from_saved(json.loads(path.read_text())))
            diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
            seeds_saved = saved.get("seeds") or []
            extended = False
            if "seeds" in diff and now["seeds"][: len(seeds_saved)] == seeds_saved:
                # more headline seeds extend a run: every finished stage stays valid (the first seed, which
                # the other arms use, is unchanged)
                del diff["seeds"]
                extended = True
            if not saved["depth_study"] and now["depth_study"]:
                # the depth study only adds stages (more seeds, a depth, a longer budget, every pair) to a run
                for key in ("depth_study", "depth_seeds", "long_multiple", "long_seeds", "full_max_pairs"):
                    diff.pop(key, None)
                extended = True
            if extended and not diff and write:
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

    def input_identity(self) -> dict:
        """``{"model" | "train_data" | "sts": {file name: sha256}, "device": {"type": ...}}``: the files every
        result depends on (the model as :func:`bellm.run_record.model_identity` hashes it, the triplets, the STS
        files) and the device type the numbers come from (``--device`` unset means CUDA when available)."""
        import torch

        from bellm.run_record import file_sha256, model_identity

        s = self.settings
        device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model_identity(s.model, s.gguf_file)["files"]
        sts = sorted(p for p in (self.data_dir / "sts").iterdir() if p.is_file())
        return {
            "model": {Path(k).name: v for k, v in model.items()},
            "train_data": {self.train_data.name: file_sha256(self.train_data)},
            "sts": {p.name: file_sha256(p) for p in sts},
            "device": {"type": device.split(":")[0]},
        }

    def check_inputs(self) -> None:
        """Record :meth:`input_identity` in ``inputs.json`` on the first run; refuse a later run whose files
        or device type differ (a run directory never mixes results of different models, data or devices). A
        group the record lacks (written before it was recorded) is added."""
        now, path = self.input_identity(), self.out / "inputs.json"
        if not path.is_file():
            atomic_write_json(path, now)
            return
        saved = json.loads(path.read_text())
        diff = []
        if set(now) - set(saved):
            atomic_write_json(path, {**saved, **{k: v for k, v in now.items() if k not in saved}})
        for group, files in now.items():
            old = saved.get(group, files)
            changed = sorted(n for n in set(old) | set(files) if old.get(n) != files.get(n))
            if changed:
                diff.append(f"{group}: {', '.join(changed)}")
        if diff:
            raise ReproduceError(
                f"{self.out} holds results of other input files ({'; '.join(diff)} differ); resume it with the "
                "same model and data, or pass another --output"
            )

    def result_path(self, name: str) -> Path:
        """``stages/<name>.json``: a stage's result, written (atomically) once the stage has finished."""
        return self.stages / f"{name}.json"

    def done(self, name: str) -> dict | None:
        path = self.result_path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def stage(self, name: str, fn, redo: bool = False) -> dict:
        """Run ``fn() -> dict`` unless ``stages/<name>.json`` exists (or ``redo``); record its wall time, the
        torch threads and the stages other processes were running when it started (``started_alongside``, when
        any); write it atomically with portable paths (:meth:`portable`)."""
        result = None if redo else self.done(name)
        if result is not None:
            return result
        alongside = self.running_elsewhere()
        t0 = time.perf_counter()
        result = fn()
        result["seconds"] = time.perf_counter() - t0
        if alongside:
            result["started_alongside"] = alongside
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        result["torch_threads"] = _threads()
        result = self.portable(to_jsonable(result))
        atomic_write_json(self.result_path(name), result)
        return result

    def portable(self, obj):
        """``obj`` with every absolute path inside the run directory made relative to it, and every one inside
        the data directory written ``<data>/...``, so a run directory can be committed and moved (read back
        with :meth:`resolve`)."""
        prefixes = [(str(self.out) + os.sep, ""), (str(self.out.resolve()) + os.sep, "")]
        try:
            data = self.data_dir
            prefixes += [
                (str(data.absolute()) + os.sep, "<data>/"),
                (str(data.resolve()) + os.sep, "<data>/"),
            ]
        except (FileNotFoundError, ReproduceError):
            pass

        def convert(value):
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, list):
                return [convert(v) for v in value]
            if isinstance(value, str):
                for prefix, new in prefixes:
                    if value.startswith(prefix):
                        return new + value[len(prefix) :]
            return value

        return convert(obj)

    def resolve(self, path: str) -> Path:
        """A path as a stage JSON holds it: absolute as is, ``<data>/...`` inside the data directory, otherwise
        relative to the run directory (or to the working directory when only that exists: older runs stored
        such paths)."""
        if path.startswith("<data>/"):
            return self.data_dir / path[len("<data>/") :]
        p = Path(path)
        if p.is_absolute():
            return p
        inside = self.out / p
        return inside if inside.exists() or not p.exists() else p

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
        """The materialised model; made again when its folder is gone (a run directory from git: the weights
        are not committed)."""

        def gone(done: dict) -> bool:
            return not self.resolve(done["path"]).exists()

        return self.shared_stage("base", self._materialise, redo_if=gone)

    @property
    def base_path(self) -> str:
        return str(self.resolve(self.base()["path"]))

    def _materialise(self) -> dict:
        """A GGUF is loaded once (de-quantised to a regular model, through bellm's converted-GGUF cache) and saved
        as safetensors (bitwise the same weights) so later loads take a second; a transformers directory is used
        in place."""
        from transformers import AutoConfig

        s = self.settings
        t0 = time.perf_counter()
        is_gguf = s.model is None or s.gguf_file is not None or str(s.model).endswith(".gguf")
        path = s.model
        params = None
        if is_gguf:
            from bellm.models import load_model_and_tokenizer

            # read from the converted-GGUF cache after the first conversion; saves like any model
            model, tokenizer = load_model_and_tokenizer(
                s.model, gguf_file=s.gguf_file, dtype=s.dtype, device="cpu"
            )
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
            self.base_path,
            adapter=adapter,
            from_layer=from_layer,
            pooling=pooling,
            prompt=BELLM_PROMPT,
            dtype=s.dtype,
            device=s.device,
        )

    def train_config(self, name: str, from_layer: int, pooling: str, seed: int, **overrides):
        from bellm.train_config import TrainConfig

        s = self.settings
        kw = dict(
            data=str(self.train_data),
            output_dir=str(self.out / "train" / name),
            model=self.base_path,
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
    def evaluate(self, name: str, encoder, every_pair: bool = False, seed_cache: str | None = None) -> dict:
        """:func:`bellm.evaluate_sts` on the seven sets (the sampled pairs, or every pair with ``every_pair``),
        with embeddings persisted so a kill loses little (``seed_cache``: an earlier evaluation of the same
        encoder whose embeddings are reused). The result holds each evaluated pair's cosine
        (``pair_cosines``: {task: [cosine per pair, in the order of ``load_sts(...).sample(max_pairs, 0)``]}),
        so the paired bootstrap works from the stage JSON alone."""
        path = self.out / "cache" / f"{name}.npz"
        if seed_cache and not path.exists() and (self.out / "cache" / f"{seed_cache}.npz").is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.out / "cache" / f"{seed_cache}.npz", path)
        cached = _PersistentEncoder(encoder, path)
        max_pairs = self.settings.full_max_pairs if every_pair else self.settings.eval_max_pairs
        result = bellm.evaluate_sts(
            cached,
            data_dir=self.data_dir,
            batch_size=self.settings.encode_batch_size,
            max_pairs=max_pairs,
            show_progress_bar=self.progress,
        )
        cached.flush()
        result["encoder"] = encoder.config_dict()
        result["pair_cosines"] = self._pair_cosines(cached.cache, max_pairs)
        return result

    def _pair_cosines(self, cache: dict[str, np.ndarray], max_pairs: int | None) -> dict[str, list[float]]:
        from bellm.evaluate import cosine_rows

        out = {}
        for task in TASKS:
            pairs = load_sts(task, "test", data_dir=self.data_dir).sample(max_pairs, 0)
            a = np.stack([cache[normalize_whitespace(x)] for x in pairs.sentences1])
            b = np.stack([cache[normalize_whitespace(x)] for x in pairs.sentences2])
            out[task] = [float(f"{c:.9g}") for c in cosine_rows(a, b)]
        return out

    def eval_sentences(self, every_pair: bool = False) -> list[str]:
        """The unique (whitespace-normalised) sentences :func:`bellm.evaluate_sts` encodes, for the plan (with
        ``every_pair``: those of the full-protocol check, ``Settings.full_max_pairs``)."""
        seen: dict[str, None] = {}
        max_pairs = self.settings.full_max_pairs if every_pair else self.settings.eval_max_pairs
        for t in TASKS:
            pairs = load_sts(t, "test", data_dir=self.data_dir).sample(max_pairs, 0)
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
        """The trained arms (name, label, from_layer, pooling, seeds). The headline pair runs with every seed;
        the others with the first seed, or with every seed in the depth study, which adds the middle depth."""
        L, k, kq = d["num_layers"], d["k_bellm"], d["k_quarter"]
        seeds = self.settings.seeds
        first = seeds[: self.settings.depth_seeds] if self.settings.depth_study else seeds[:1]
        middle = []
        if self.settings.depth_study and L // 2 not in (0, k, kq):
            middle = [
                {
                    "name": f"bidir-k{L // 2}",
                    "label": f"bidirectional from k={L // 2} (middle of the stack)",
                    "from_layer": L // 2,
                    "pooling": "last",
                    "seeds": first,
                }
            ]
        arms = [
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
            *middle,
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
        return arms

    # -- stages ------------------------------------------------------------------------------------------
    def turning_point(self) -> dict:
        """The per-layer curve of the untrained causal model and the design chosen from it, with the
        ``from_layer`` sweep (the depth study runs the sweep as a later stage of its own, :meth:`sweep`)."""

        def run() -> dict:
            from bellm.models import load_model_and_tokenizer

            s = self.settings
            model, tokenizer = load_model_and_tokenizer(self.base_path, dtype=s.dtype, device=s.device)
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
            if not s.depth_study:
                result.sweep = self._sweep(model, tokenizer, d)
            json_path, png_path = result.save(self.out / "turning_point")
            return {"curve": result.to_dict(), "design": d, "json": str(json_path), "png": str(png_path)}

        return self.shared_stage("turning_point", run)

    def _sweep(self, model, tokenizer, d: dict) -> dict:
        """STS-B dev Spearman of the final embedding with layers >= k bidirectional, for the arms' k."""
        s, L = self.settings, d["num_layers"]
        ks = sorted({0, L // 2, d["k_quarter"], d["k_bellm"], L - 1, L} if not s.smoke else {d["k_bellm"], L})
        return bellm.sweep_from_layer(
            model,
            tokenizer,
            from_layers=ks,
            pooling="last",
            max_pairs=s.tp_pairs,
            data_dir=self.data_dir,
            batch_size=s.encode_batch_size,
            show_progress_bar=self.progress,
        )

    def sweep(self, d: dict) -> dict:
        """The depth study's ``sweep`` stage: :meth:`_sweep` on its own (``{"sweep": {k: Spearman}}``)."""

        def run() -> dict:
            from bellm.models import load_model_and_tokenizer

            s = self.settings
            model, tokenizer = load_model_and_tokenizer(self.base_path, dtype=s.dtype, device=s.device)
            return {"sweep": self._sweep(model, tokenizer, d)}

        return self.stage("sweep", run)

    def plan(self) -> dict:
        return self.shared_stage("plan", self._measure)

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
            bellm.train(config)
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
            **({"full_unique_sentences": len(self.eval_sentences(True))} if s.depth_study else {}),
            "cpu_threads": _threads(),
        }

    def _tokens_per_step(self) -> float:
        from transformers import AutoTokenizer

        from bellm.train_data import prompt_token_ids, read_train_data

        s = self.settings
        tok = AutoTokenizer.from_pretrained(self.base_path, local_files_only=True)
        data = read_train_data(self.train_data, "triplets", s.max_examples or 512)
        lengths = [
            len(ids)
            for col in data.texts
            for ids in prompt_token_ids(tok, col[:512], BELLM_PROMPT, s.max_length)
        ]
        return float(np.mean(lengths)) * 3 * s.batch_size * s.grad_accum

    def estimate(self) -> dict:
        """Seconds per stage of the whole run and of what remains, from the measured plan (done stages count
        0). Before the turning point the stage names come from a same-sized placeholder design."""
        p = self.plan()
        L = self.base()["num_layers"]
        tp_unique = 2 * (self.settings.tp_pairs or 1500) * 0.97
        sweep = 0 if self.settings.depth_study else 6 * tp_unique  # the depth study's is a stage of its own
        rows = {"turning_point": (tp_unique * 2.0 + sweep) / p["encode_sentences_per_s"] + 20}
        d = self.done("turning_point")
        design = d["design"] if d else choose_depths([0.0] * (L + 1), L - 2, L)  # a same-sized placeholder
        for name, _ in self.jobs(design, for_estimate=True):
            rows[name] = self.stage_seconds(name, p)
        if d is None:  # the placeholder's names may differ from the real ones: count, do not match
            return {"stages": rows, "remaining_s": sum(rows.values()), "total_s": sum(rows.values())}
        remaining = {k: (0.0 if self.done(k) else v) for k, v in rows.items()}
        return {"stages": rows, "remaining_s": sum(remaining.values()), "total_s": sum(rows.values())}

    def stage_seconds(self, name: str, p: dict) -> float:
        """The estimated seconds of one stage (by its kind, read from the name) from the plan's measurements."""
        eval_s = p["eval_unique_sentences"] / p["encode_sentences_per_s"] + p["model_load_s"] + 2
        if name.startswith("untrained-"):
            return eval_s
        if name == "sweep":
            return 6 * 2 * (self.settings.tp_pairs or 1500) * 0.97 / p["encode_sentences_per_s"] + 20
        if name.startswith("eval-"):
            return eval_s + 5
        if name.startswith("fullpairs-"):
            full = p.get("full_unique_sentences") or 7 * p["eval_unique_sentences"]
            return full / p["encode_sentences_per_s"] + p["model_load_s"] + 5
        if name.startswith("train-"):
            multiple = self.settings.long_multiple if name.startswith("train-long") else 1
            return self.total_steps() * multiple * p["train_seconds_per_step"] + p["train_setup_s"]
        return 1.0

    def total_steps(self) -> int:
        s = self.settings
        if s.steps:
            return s.steps
        from bellm.train_data import read_train_data

        n = len(read_train_data(self.train_data, "triplets", s.max_examples))
        return max(1, s.epochs * (n // s.batch_size) // s.grad_accum)

    def jobs(self, d: dict, for_estimate: bool = False) -> list[tuple[str, object]]:
        """``(stage name, fn)`` of every stage after the turning point, in run order. The depth study orders
        them itself and adds stages that depend on finished ones (:mod:`experiments.depth_study`);
        ``for_estimate`` names those too (with a placeholder arm) instead of leaving them out."""
        if self.settings.depth_study:
            from experiments.depth_study import depth_study_jobs

            return depth_study_jobs(self, d, for_estimate)
        jobs = [
            (f"untrained-{r['name']}", lambda r=r: self._eval_untrained(r)) for r in self.untrained_rows(d)
        ]
        for a in self.arms(d):
            for seed in a["seeds"]:
                jobs += self.arm_jobs(a, seed)
        return jobs

    def arm_jobs(self, arm: dict, seed: int) -> list[tuple[str, object]]:
        """The training and the evaluation of one arm and seed."""
        return [
            (f"train-{arm['name']}-seed{seed}", lambda: self._train(arm, seed)),
            (f"eval-{arm['name']}-seed{seed}", lambda: self._eval_trained(arm, seed)),
        ]

    def needs(self, name: str, order: list[str]) -> list[str]:
        """The stages that must be done before ``name`` can start (``order``: every stage name in run order):
        an evaluation or full-protocol scoring needs its arm's training / sampled evaluation, ``best-depth``
        needs every evaluation before it; the rest need nothing beyond the turning point."""
        if name.startswith("eval-"):
            return ["train-" + name[len("eval-") :]]
        if name.startswith("fullpairs-"):
            return ["eval-" + name[len("fullpairs-") :]]
        if name == "best-depth":
            return [n for n in order[: order.index(name)] if n.startswith("eval-")]
        return []

    def shared_stage(self, name: str, fn, redo_if=None) -> dict:
        """:meth:`stage` for a stage every worker needs before its own work (``base``, ``plan``,
        ``turning_point``): the first process runs it while the others wait on its lock, then read its result
        instead of running it too. ``redo_if(result) -> bool``: a finished result to make again (the base
        model's folder is gone on a new machine)."""

        def to_make(done: dict | None) -> bool:
            return done is None or bool(redo_if and redo_if(done))

        done = self.done(name)
        if not to_make(done):
            return done
        self.claim(name, wait=True)
        try:
            done = self.done(name)  # as another process may have left it
            return self.stage(name, fn, redo=True) if to_make(done) else done
        finally:
            self.release(name)

    def inputs_done(self, name: str, order: list[str]) -> bool:
        """Whether every stage ``name`` needs (:meth:`needs`, in run order ``order``) has finished."""
        return all(self.done(p) is not None for p in self.needs(name, order))

    def claim(self, name: str, wait: bool = False) -> bool:
        """Lock ``stages/<name>.lock`` (an exclusive ``fcntl.flock``, held until :meth:`release`) so that no
        other process working on this run directory starts the same stage. The operating system drops the lock
        when its process ends, however it ends, so a lock is never stale. The files stay (git ignores them).
        Returns whether this process now holds it (``wait``: block until it does); without ``fcntl`` (Windows)
        every claim succeeds: run one process per run directory there."""
        if fcntl is None:
            return True
        self.stages.mkdir(parents=True, exist_ok=True)
        f = open(self.stages / f"{name}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return False
        self._held[name] = f
        return True

    def release(self, name: str) -> None:
        f = self._held.pop(name, None)
        if f is not None:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def running_elsewhere(self) -> list[str]:
        """The stages another process holds now (:meth:`claim`) and has not finished: a process writes a stage's
        result before it lets go of the lock, and a finished stage is not running alongside anything."""
        held = []
        for path in sorted(self.stages.glob("*.lock")) if fcntl is not None else []:
            name = path.name[: -len(".lock")]
            if name in self._held or self.result_path(name).is_file():
                continue
            with open(path, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held.append(name)
                else:
                    fcntl.flock(f, fcntl.LOCK_UN)
        return held

    def run_all(self, stop_after_s: float | None = None, poll_s: float = 30.0) -> int:
        """Every stage not done yet, in order (the caller shows the plan first: :func:`report.format_plan`).
        Several processes may work on one run directory at once: each takes the first stage that is not
        done, not held by another (:meth:`claim`) and whose :meth:`needs` are done, and waits ``poll_s``
        seconds at a time while every stage left is running elsewhere or waits on one that is.
        ``stop_after_s``: no stage starts once that many seconds have passed (rerun to resume). Returns the
        number of stages left."""
        from tqdm.auto import tqdm

        t_start = time.monotonic()
        self.base()
        tp = self.turning_point()
        d = tp["design"]
        tqdm.write(
            f"turning point: layer {d['turning_point']} of {d['num_layers']}; k = {d['k_bellm']} "
            f"({d['k_rule']}); second depth k = {d['k_quarter']}"
        )
        waiting_for = None
        with tqdm(
            total=0,
            unit="s",
            desc="reproduce (est. seconds of work)",
            disable=not self.progress,
            position=0,
            dynamic_ncols=True,
        ) as bar:
            while True:  # the job list grows as stages finish (the depth study's later stages)
                est = self.estimate()["stages"]
                jobs = self.jobs(d)
                order = [n for n, _ in jobs]
                todo = [(n, f) for n, f in jobs if self.done(n) is None]
                if not todo:
                    return 0
                inputs_done = functools.partial(self.inputs_done, order=order)
                if stop_after_s is not None and time.monotonic() - t_start > stop_after_s:
                    elsewhere = set(self.running_elsewhere())
                    nxt = next((n for n, _ in todo if n not in elsewhere and inputs_done(n)), None)
                    tqdm.write(
                        (f"stopping before {nxt}" if nxt else "stopping")
                        + ": --stop-after reached"
                        + (
                            f" ({', '.join(sorted(elsewhere))} running in another process)"
                            if elsewhere
                            else ""
                        )
                        + "; rerun the same command to resume"
                    )
                    return len(todo)
                bar.total = bar.n + round(sum(est.get(n, 60.0) for n, _ in todo))
                bar.refresh()
                job = next(((n, f) for n, f in todo if inputs_done(n) and self.claim(n)), None)
                if job is None:
                    elsewhere = self.running_elsewhere()
                    if elsewhere != waiting_for:
                        tqdm.write(
                            f"waiting: the {len(todo)} stage(s) left wait on {', '.join(elsewhere) or 'nothing'}"
                            ", running in another process"
                        )
                        waiting_for = elsewhere
                    time.sleep(poll_s)
                    continue
                name, fn = job
                waiting_for = None
                try:
                    if self.done(name) is None:  # finished by another process between the check and the claim
                        bar.set_postfix_str(name)
                        self.stage(name, fn)
                finally:
                    self.release(name)
                bar.update(round(est.get(name, 60.0)))

    def _eval_untrained(self, row: dict) -> dict:
        result = self.evaluate(
            f"untrained-{row['name']}", self.load_encoder(row["from_layer"], row["pooling"])
        )
        return {"row": row, **result}

    def _arm_config(self, arm: dict, seed: int):
        """The training config of an arm and seed; an arm with ``multiple`` trains that many times longer."""
        overrides = {}
        if arm.get("multiple", 1) != 1:
            s, m = self.settings, arm["multiple"]
            steps = self.total_steps() * m
            overrides = {"max_steps": steps, "save_steps": 0 if s.smoke else max(1, min(25, steps // 4))}
        return self.train_config(
            f"{arm['name']}-seed{seed}", arm["from_layer"], arm["pooling"], seed, **overrides
        )

    def _train(self, arm: dict, seed: int) -> dict:
        config = self._arm_config(arm, seed)
        result = bellm.train(config)
        return {"arm": arm, "seed": seed, "train": result, "config": dataclasses.asdict(config)}

    def adapter(self, arm: dict, seed: int) -> str:
        """The trained adapter of an arm and seed. When its folder is gone (a run directory from git: adapters
        are not committed) it is trained again: the same config resumes from whatever checkpoints exist."""
        path = self.resolve(self.done(f"train-{arm['name']}-seed{seed}")["train"]["output_dir"])
        if not path.is_dir():
            bellm.train(self._arm_config(arm, seed))
        return str(path)

    def _eval_trained(self, arm: dict, seed: int) -> dict:
        adapter = self.adapter(arm, seed)
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
