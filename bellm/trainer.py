"""BeLLM training: a patched LLM + LoRA (peft) + the AnglE loss, through the packed path and fused kernels.

``bellm.train(TrainConfig(...))`` or ``bellm train --data triplets.tsv.gz --output runs/x --from-layer -4``.

One micro-batch = ``batch_size`` examples per process. Every text is prompted (``BELLM_PROMPT``), tokenized
once at start-up (text truncated so the prompt's closing ``"`` stays last, see
:func:`bellm.train_data.prompt_token_ids`), and the anchors, positives and negatives of a micro-batch run as
**one packed varlen forward** (no padding) through the model patched by :func:`bellm.patch`; embeddings
are ``bellm_kernels.pool(mode="last")`` (with its backward). AdamW, warmup + linear/cosine decay
(transformers' schedulers), gradient accumulation, bf16 autocast on CUDA, optional gradient checkpointing and
4-bit loading (bitsandbytes, CUDA only).

Output directory::

    adapter_model.safetensors, adapter_config.json   the final LoRA adapter (peft save_pretrained)
    bellm_encoder.json                               from_layer, pooling, prompt, max_length for bellm.Encoder
    run_config.json                                  the TrainConfig of the run (resume checks it)
    train_log.jsonl                                  one line per logged step / evaluation
    best/                                            the adapter with the best STS-B dev Spearman (with eval)
    checkpoints/step-N/, checkpoints/latest          adapter + trainer_state.pt (optimizer, scheduler,
                                                     RNG states, step)

Resume is exact: the data order is a function of ``(seed, epoch)`` and the position is the optimizer step, the
RNG states are restored, and ``trainer_state.pt`` loads with ``torch.load(weights_only=True)``. A run killed
with SIGKILL and resumed reproduces the uninterrupted run's losses and final adapter (bitwise on CPU).
Checkpoints are written to a temporary directory and renamed; ``checkpoints/latest`` is replaced atomically
after the rename.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP and the embeddings of every
rank are gathered with ``torch.distributed.nn.functional.all_gather`` (which keeps gradients), so the in-batch
negative pool is the global batch and the step equals one process with ``batch_size * world_size`` examples.
For models that do not fit one GPU even with LoRA (and 4-bit), shard with FSDP (``accelerate launch
--use_fsdp`` with ``fsdp_use_orig_params=True`` so peft's frozen/trainable mix works,
``auto_wrap_policy=TRANSFORMER_BASED_WRAP``); the loss and the gather are unchanged, but this trainer wraps in
DDP only — FSDP is not tested here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bellm.common import ENCODER_CONFIG
from bellm.losses import AnglELoss
from bellm.train_config import RESUME_FREE, TrainConfig, check_config
from bellm.train_data import TrainData, prompt_token_ids, read_train_data

__all__ = ["TrainConfig", "train", "batch_loss", "embed_packed"]

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "trainer_state.pt"
OWNED = (  # every name bellm train writes in its output folder (listed in run_config.json)
    "adapter_model.safetensors",
    "adapter_config.json",
    "README.md",
    ENCODER_CONFIG,
    RUN_CONFIG,
    LOG_FILE,
    "best",
    "checkpoints",
    ".final",
)
OUTPUTS_KEY = "bellm_outputs"  # run_config.json: the names bellm train writes in its folder (--overwrite)
IDENTITY_KEY = "identity"  # run_config.json: what the result depends on besides the config (bellm.run_record)

# ---------------------------------------------------------------------------- forward + loss


def embed_packed(
    model, token_ids: list[list[int]], device: torch.device, pooling: str = "last"
) -> torch.Tensor:
    """Embeddings ``(len(token_ids), dim)`` of one packed forward (no padding): ``pooling`` (default
    last-token) through ``bellm_kernels.pool`` on the last hidden state ``(total_tokens, dim)``."""
    import bellm_kernels
    from bellm.packing import pack

    batch = pack(token_ids).to(device)
    out = model(**batch.model_kwargs(), use_cache=False)
    hidden = out.last_hidden_state[0]
    return bellm_kernels.pool(hidden, mode=pooling, cu_seqlens=batch.cu_seqlens)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, gradients flowing back to each rank's own part."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def batch_loss(
    model,
    loss_fn: AnglELoss,
    columns: list[list[list[int]]],
    scores: torch.Tensor | None,
    device: torch.device,
    pooling: str = "last",
) -> tuple[torch.Tensor, int]:
    """AnglE loss of one micro-batch: ``columns`` = [anchors, positives(, negatives)], each a list of token-id
    lists of one length ``n``; all texts go through one packed forward. Returns ``(loss, num_tokens)``; under
    torch.distributed the loss is over the batch gathered from every rank (identical on all ranks)."""
    n = len(columns[0])
    flat = [ids for col in columns for ids in col]
    emb = embed_packed(model, flat, device, pooling).float()
    parts = [_gather(emb[i * n : (i + 1) * n]) for i in range(len(columns))]
    if scores is not None:
        loss = loss_fn(parts[0], parts[1], scores=_gather(scores.to(device)))
    else:
        loss = loss_fn(*parts)
    return loss, sum(len(ids) for ids in flat)


# ---------------------------------------------------------------------------- model set-up


def _lora_targets(model) -> list[str]:
    """Names of every ``nn.Linear`` (and bitsandbytes 4-bit linear) except the LM head."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Linear4bit":
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in ("lm_head", "score", "classifier"):
                names.add(leaf)
    return sorted(names)


def build_model(config: TrainConfig, device: torch.device):
    """Load, patch and wrap the model with LoRA; returns ``(peft_model, tokenizer, num_layers)``."""
    from peft import LoraConfig, get_peft_model

    from bellm.models import load_model_and_tokenizer
    from bellm.surgery import patch

    if config.load_in_4bit:
        model, tokenizer = _load_4bit(config, device)
    else:
        model, tokenizer = load_model_and_tokenizer(
            config.model, gguf_file=config.gguf_file, dtype=config.dtype, device=device
        )
    num_layers = int(model.config.get_text_config().num_hidden_layers)
    if not -num_layers <= config.from_layer <= num_layers:
        raise ValueError(
            f"from_layer = {config.from_layer} is out of range for this {num_layers}-layer model; use "
            f"0..{num_layers} or -{num_layers}..-1 (counted from the end)"
        )
    model = patch(model, from_layer=config.from_layer)
    if config.gradient_checkpointing:
        # newer transformers call it activation checkpointing; 5.17 only has the old name
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    torch.manual_seed(config.seed)  # LoRA initialisation
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=_lora_targets(model),
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    return peft_model, tokenizer, num_layers


def _load_4bit(config: TrainConfig, device: torch.device):
    if device.type != "cuda":
        raise RuntimeError("load_in_4bit needs CUDA (bitsandbytes 4-bit kernels); drop --load-in-4bit on CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "load_in_4bit needs bitsandbytes: pip install 'bellm[bnb]' (or bitsandbytes)"
        ) from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModel, AutoTokenizer, BitsAndBytesConfig

    from bellm.models import default_model

    path, gguf = default_model() if config.model is None else (config.model, config.gguf_file)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    kw = dict(local_files_only=True, **({"gguf_file": gguf} if gguf else {}))
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
    model = AutoModel.from_pretrained(
        str(path), quantization_config=quant, device_map={"": device.index or 0}, **kw
    )
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=config.gradient_checkpointing
    ), tokenizer


# ---------------------------------------------------------------------------- data order


class DataOrder:
    """Deterministic example order: epoch ``e`` is ``randperm(N, seed + e)``; global micro-batch ``g``
    (counted over all epochs) is a slice of ``batch_size * world`` examples of it; a rank takes its
    ``batch_size`` part. The incomplete last slice of an epoch is dropped."""

    def __init__(self, n: int, batch_size: int, world: int, rank: int, seed: int):
        self.n, self.batch_size, self.world, self.rank, self.seed = n, batch_size, world, rank, seed
        self.global_batch = batch_size * world
        self.per_epoch = n // self.global_batch
        self._cache: tuple[int, torch.Tensor] | None = None

    def indices(self, micro: int) -> list[int]:
        epoch, g = divmod(micro, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._cache = (epoch, torch.randperm(self.n, generator=gen))
        start = g * self.global_batch + self.rank * self.batch_size
        return self._cache[1][start : start + self.batch_size].tolist()


# ---------------------------------------------------------------------------- files


def _run_identity(config: TrainConfig, device: torch.device) -> dict:
    """Everything besides the config that the result depends on: the content of the data, eval data and model
    files, the weights' dtype and device type, and the bellm version (:mod:`bellm.run_record`)."""
    import bellm
    from bellm.models import resolve_dtype
    from bellm.run_record import input_identity, model_identity

    return {
        "bellm_version": bellm.__version__,
        "data": input_identity(config.data),
        "eval_data": input_identity(config.eval_data) if config.eval_data else None,
        "model": model_identity(config.model, config.gguf_file),
        "dtype": "nf4" if config.load_in_4bit else str(resolve_dtype(config.dtype, device)),
        "device_type": device.type,
    }


def _prepare_output(config: TrainConfig, rank: int, identity: dict) -> Path | None:
    """Check (and for ``--overwrite`` clean) the output folder, before any model is loaded; returns the
    checkpoint folder to resume from (or None).

    Raises NotADirectoryError / PermissionError for an unusable path, FileExistsError for a non-empty folder
    without ``--resume`` / ``--overwrite`` and for ``--overwrite`` on a folder without bellm's run record,
    :class:`bellm.run_record.RunMismatchError` for a resume with another set-up,
    :class:`bellm.run_record.CorruptRecordError` for a damaged record or no usable checkpoint.
    """
    out = Path(config.output_dir)
    _check_output_path(out)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not (config.resume or config.overwrite):
        raise FileExistsError(
            f"output dir {str(out)!r} is not empty (holds {', '.join(entries[:6])}"
            f"{', ...' if len(entries) > 6 else ''})"
            "; pass --resume to continue that run or --overwrite to replace it, or choose another --output"
        )
    if config.resume and entries:
        if not (out / RUN_CONFIG).is_file():
            raise FileExistsError(
                f"--resume: {str(out)!r} holds files but no {RUN_CONFIG}, so it is not a bellm run (or bellm "
                "cannot tell which set-up wrote it); choose another --output"
            )
        _check_resume(config, out, identity)
        return find_resume_checkpoint(out)
    if config.overwrite and entries and rank == 0:
        _remove_own_outputs(out, entries)
    return None


def _check_output_path(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {str(out)!r} is a file; pass a directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"output {str(out)!r}: {str(existing)!r} is a file; pass a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {str(existing)!r} is not writable; choose another --output")


def _check_resume(config: TrainConfig, out: Path, identity: dict) -> None:
    """RunMismatchError naming the first config field or identity field that differs from the recorded run."""
    from bellm.run_record import CorruptRecordError, RunMismatchError, check_same_run, read_record

    saved = read_record(out / RUN_CONFIG)
    fix = "choose another --output for this set-up (or resume with the recorded one)"
    now = dataclasses.asdict(config)
    defaults = dataclasses.asdict(TrainConfig(data="", output_dir=""))  # fields added after that run
    for k, v in now.items():
        if k not in RESUME_FREE and saved.get(k, defaults[k]) != v:
            raise RunMismatchError(
                f"--resume with a different configuration than the run in {str(out)!r}: {k}: saved "
                f"{saved.get(k, defaults[k])!r}, now {v!r}; {fix}"
            )
    if not isinstance(saved.get(IDENTITY_KEY), dict):
        raise CorruptRecordError(
            f"{out / RUN_CONFIG} records no data/model identity (written by an older bellm), so a resume could "
            "mix data or models; choose another --output"
        )
    check_same_run(saved[IDENTITY_KEY], identity, where=str(out / RUN_CONFIG), fix=fix)


def _remove_own_outputs(out: Path, entries: list[str]) -> None:
    """``--overwrite``: delete exactly the names the folder's run record lists as bellm's outputs.

    FileExistsError, deleting nothing, when the folder has no readable bellm run record (bellm did not make
    it). Files bellm does not own are kept, and named in a warning.
    """
    from bellm.run_record import CorruptRecordError, read_record

    record_path = out / RUN_CONFIG
    refuse = (
        f"--overwrite refused: {str(out)!r} was not created by bellm train (no readable {RUN_CONFIG} listing "
        "its outputs), so nothing was deleted; choose another --output or empty the folder yourself"
    )
    if not record_path.is_file():
        raise FileExistsError(refuse)
    try:
        owned = read_record(record_path).get(OUTPUTS_KEY)
    except CorruptRecordError:
        raise FileExistsError(refuse) from None
    if not isinstance(owned, list) or not all(isinstance(n, str) and n == Path(n).name for n in owned):
        raise FileExistsError(refuse)
    for name in [n for n in owned if n != RUN_CONFIG] + [RUN_CONFIG]:  # the record last
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    foreign = [e for e in entries if e not in owned]
    if foreign:
        logger.warning(
            "bellm train: --overwrite kept files bellm did not write in %s: %s", out, ", ".join(foreign)
        )


def _checkpoint_problem(ckdir: Path) -> str | None:
    """Why ``ckdir`` cannot be resumed from (missing, or a file that does not load), or None when it can."""
    from safetensors import safe_open

    if not ckdir.is_dir():
        return "missing"
    for name in ("adapter_model.safetensors", "adapter_config.json", STATE_FILE):
        if not (ckdir / name).is_file():
            return f"no {name}"
    try:
        with safe_open(str(ckdir / "adapter_model.safetensors"), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
        json.loads((ckdir / "adapter_config.json").read_text(encoding="utf-8"))
        state = torch.load(ckdir / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to load makes the checkpoint unusable; named below
        return f"does not load ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
    if not isinstance(state, dict) or not {"step", "optimizer", "scheduler", "rng"} <= set(state):
        return f"{STATE_FILE} lacks the trainer state"
    return None


def find_resume_checkpoint(out: Path) -> Path | None:
    """The checkpoint to resume from: ``checkpoints/latest`` when it loads, else the newest one that does.

    Damaged or missing checkpoints are skipped with a warning naming the skipped one and the one used.
    Returns None when the run has no checkpoints yet (it starts from step 0). Raises
    :class:`bellm.run_record.CorruptRecordError` when checkpoints exist and none loads.
    """
    from bellm.run_record import CorruptRecordError

    ckroot = out / "checkpoints"
    latest_file = ckroot / "latest"
    steps = sorted(
        (p for p in ckroot.glob("step-*") if p.is_dir() and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
        reverse=True,
    )
    candidates = []
    if latest_file.is_file():
        name = latest_file.read_text(encoding="utf-8", errors="replace").strip()
        candidates.append(
            ckroot / name if name and name == Path(name).name else ckroot / "(unreadable latest)"
        )
    candidates += [p for p in steps if p not in candidates]
    skipped = []
    for ckdir in candidates:
        problem = _checkpoint_problem(ckdir)
        if problem is None:
            if skipped:
                logger.warning(
                    "bellm train: checkpoint %s is unusable; resuming from the previous good one, %s",
                    skipped[0],
                    ckdir,
                )
            return ckdir
        skipped.append(f"{ckdir} ({problem})")
    if skipped:
        raise CorruptRecordError(
            f"no usable checkpoint in {ckroot}: {'; '.join(skipped)}; start the run again with --overwrite"
        )
    return None


def _save_adapter_files(model, target: Path, extra: dict[str, bytes] | None = None) -> None:
    """Write the adapter (and ``extra`` files) into a temp dir beside ``target``, then rename it onto
    ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _encoder_config(config: TrainConfig, num_layers: int) -> dict:
    k = config.from_layer + num_layers if config.from_layer < 0 else config.from_layer
    return {
        "from_layer": k,
        "pooling": config.pooling,
        "prompt": config.prompt,
        "max_length": config.max_length,
        "billm_compat": False,
        "exclude_prompt": False,
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_log(path: Path, upto_step: int) -> list[str]:
    lines = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if row.get("step", 0) <= upto_step:
                lines.append(json.dumps(row))
    return lines


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_spearman(
    model,
    pairs: list[list[list[int]]],
    scores: list[float],
    device: torch.device,
    max_tokens: int = 4096,
    pooling: str = "last",
) -> float:
    """Spearman (scipy) of the cosine of each pair's embeddings against ``scores``, packed forwards in eval
    mode."""
    from scipy.stats import spearmanr

    from bellm.packing import plan_batches

    was_training = model.training
    model.eval()
    flat = pairs[0] + pairs[1]
    out = []
    for idx in plan_batches([len(t) for t in flat], max_tokens):
        out.append((idx, embed_packed(model, [flat[i] for i in idx], device, pooling).float().cpu()))
    emb = torch.empty(len(flat), out[0][1].shape[1])
    for idx, e in out:
        emb[idx] = e
    n = len(pairs[0])
    cos = torch.nn.functional.cosine_similarity(emb[:n], emb[n:], dim=-1)
    model.train(was_training)
    return float(spearmanr(cos.numpy(), scores).statistic)


# ---------------------------------------------------------------------------- the loop


def _schedule(name: str, optimizer, warmup: int, total: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if name == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if name == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"scheduler must be 'linear', 'cosine' or 'constant', got {name!r}")


@dataclass
class _Run:
    """The state of one training run, shared by the steps of :func:`train`."""

    config: TrainConfig
    identity: dict  # the run record's "identity": data/model hashes, dtype, device type (_run_identity)
    world: int
    rank: int
    device: torch.device
    out: Path
    model: torch.nn.Module  # the peft model; ``ddp_model`` wraps it under torchrun
    ddp_model: torch.nn.Module
    num_layers: int
    columns: list[list[list[int]]]  # token ids: [anchors, positives(, negatives)]
    scores: torch.Tensor | None  # gold scores of scored pairs, None for triplets
    eval_pairs: list[list[list[int]]] | None
    eval_scores: list[float] | None
    order: DataOrder
    total_steps: int
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: AnglELoss
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None

    @property
    def log_path(self) -> Path:
        return self.out / LOG_FILE


def _init_distributed(config: TrainConfig) -> tuple[int, int, torch.device]:
    """``(world_size, rank, device)``; under torchrun (``WORLD_SIZE`` > 1) the process group is initialised
    (nccl on CUDA, gloo on CPU). The device is ``config.device``, else ``cuda:$LOCAL_RANK`` when CUDA is
    present, else the CPU."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = (config.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if config.device is not None:
        device = torch.device(config.device)
    elif use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return world, rank, device


def _set_up(config: TrainConfig) -> tuple[_Run, Path | None]:
    """Read the data, check the output directory, load and wrap the model, tokenize, build the optimizer and
    schedule; returns the run and the checkpoint to resume from (None for a fresh run)."""
    import torch.distributed as dist

    world, rank, device = _init_distributed(config)
    data: TrainData = read_train_data(config.data, config.data_kind, config.max_examples)
    identity = _run_identity(config, device)
    resume_from = _prepare_output(config, rank, identity)  # all before the model loads
    if world > 1:
        dist.barrier()
    model, tokenizer, num_layers = build_model(config, device)
    columns = [prompt_token_ids(tokenizer, col, config.prompt, config.max_length) for col in data.texts]
    eval_pairs = eval_scores = None
    if config.eval_data:
        ev = read_train_data(config.eval_data, "pairs", config.eval_max_pairs)
        eval_pairs = [prompt_token_ids(tokenizer, col, config.prompt, config.max_length) for col in ev.texts]
        eval_scores = ev.scores

    order = DataOrder(len(data), config.batch_size, world, rank, config.seed)
    if order.per_epoch == 0:
        raise ValueError(
            f"{data.path} has {len(data)} examples, fewer than one global micro-batch of {order.global_batch} "
            f"(batch_size {config.batch_size} x {world} processes); lower --batch-size"
        )
    total_steps = config.max_steps or max(1, config.epochs * order.per_epoch // config.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    run = _Run(
        config=config,
        identity=identity,
        world=world,
        rank=rank,
        device=device,
        out=Path(config.output_dir),
        model=model,
        ddp_model=model,
        num_layers=num_layers,
        columns=columns,
        scores=torch.tensor(data.scores) if data.scores is not None else None,
        eval_pairs=eval_pairs,
        eval_scores=eval_scores,
        order=order,
        total_steps=total_steps,
        params=params,
        optimizer=optimizer,
        scheduler=_schedule(config.scheduler, optimizer, config.warmup_steps, total_steps),
        loss_fn=AnglELoss(
            config.cosine_w, config.ibn_w, config.angle_w, config.cosine_tau, config.ibn_tau, config.angle_tau
        ),
    )
    return run, resume_from


def _resume(run: _Run, resume_from: Path | None) -> None:
    """Load the adapter, optimizer, scheduler, step, best metric and this rank's RNG state from
    ``resume_from``; a fresh run seeds the RNG with ``seed + rank`` instead. Then rank 0 writes the run
    config and cuts the log back to the resumed step."""
    from bellm._io import atomic_write_json, atomic_write_text

    if resume_from is not None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=True)
        set_peft_model_state_dict(
            run.model, load_file(str(resume_from / "adapter_model.safetensors"), device=str(run.device))
        )
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.step, run.best_metric, run.best_step = state["step"], state["best_metric"], state["best_step"]
        if len(state["rng"]) != run.world:
            raise ValueError(
                f"checkpoint {resume_from} was written by {len(state['rng'])} processes, now {run.world}"
            )
        _set_rng_state(state["rng"][run.rank])
    else:
        torch.manual_seed(run.config.seed + run.rank)
    if run.rank == 0:
        run.out.mkdir(parents=True, exist_ok=True)
        record = {**dataclasses.asdict(run.config), IDENTITY_KEY: run.identity, OUTPUTS_KEY: list(OWNED)}
        atomic_write_json(run.out / RUN_CONFIG, record)
        kept = _read_log(run.log_path, run.step)
        atomic_write_text(run.log_path, "".join(line + "\n" for line in kept))


def _wrap_distributed(run: _Run) -> None:
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.ddp_model = DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )


def _optimization_step(run: _Run, autocast) -> tuple[float, int, float]:
    """One optimizer step over ``grad_accum`` micro-batches; returns ``(loss, tokens, learning rate)``.

    Raises FloatingPointError for a NaN/inf loss before anything of the step is applied or saved."""
    config = run.config
    step_loss, step_tokens = 0.0, 0
    for micro in range(config.grad_accum):
        idx = run.order.indices(run.step * config.grad_accum + micro)
        batch_cols = [[col[i] for i in idx] for col in run.columns]
        batch_scores = run.scores[idx] if run.scores is not None else None
        sync = micro == config.grad_accum - 1 or run.world == 1
        with run.ddp_model.no_sync() if not sync else contextlib.nullcontext():
            with autocast:
                loss, n_tok = batch_loss(
                    run.ddp_model, run.loss_fn, batch_cols, batch_scores, run.device, config.pooling
                )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss.item()} at step {run.step + 1} (micro-batch {micro + 1}/"
                    f"{config.grad_accum}); stopped without saving. The last checkpoint in "
                    f"{run.out / 'checkpoints'} is intact; lower the learning rate, check the data, or use fp32"
                )
            (loss / config.grad_accum).backward()
        step_loss += loss.item() / config.grad_accum
        step_tokens += n_tok
    if config.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return step_loss, step_tokens, lr


def _log_and_evaluate(run: _Run, loss: float, lr: float, tokens_per_s: float) -> None:
    """Append the step's log row (every ``logging_steps``) and, every ``eval_steps``, the dev Spearman; a new
    best metric saves the adapter to ``best/``. The last step always logs and evaluates."""
    config, step = run.config, run.step
    last = step == run.total_steps
    rows = []
    if step % config.logging_steps == 0 or last:
        rows.append(
            {
                "step": step,
                "loss": loss,
                "lr": lr,
                "tokens_per_s": round(tokens_per_s, 1),
                "epoch": round(step * config.grad_accum / run.order.per_epoch, 4),
            }
        )
    if config.eval_steps and (step % config.eval_steps == 0 or last):
        metric = evaluate_spearman(
            run.model, run.eval_pairs, run.eval_scores, run.device, pooling=config.pooling
        )
        rows.append({"step": step, "eval_spearman": metric})
        if run.best_metric is None or metric > run.best_metric:
            run.best_metric, run.best_step = metric, step
            if run.rank == 0:
                enc = json.dumps(_encoder_config(config, run.num_layers), indent=2).encode()
                _save_adapter_files(run.model, run.out / "best", {ENCODER_CONFIG: enc})
    if run.rank == 0 and rows:
        with open(run.log_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()


def _save_checkpoint(run: _Run) -> None:
    """``checkpoints/step-N`` (adapter + optimizer, scheduler, every rank's RNG state, best metric), renamed
    into place, then ``checkpoints/latest`` replaced atomically; only the newest ``save_total_limit`` stay."""
    import torch.distributed as dist

    from bellm._io import atomic_write_text

    rng = [_rng_state()]
    if run.world > 1:
        gathered: list = [None] * run.world
        dist.all_gather_object(gathered, rng[0])
        rng = gathered
    if run.rank == 0:
        state = {
            "step": run.step,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng,
            "best_metric": run.best_metric,
            "best_step": run.best_step,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        name = f"step-{run.step}"
        ckdir = run.out / "checkpoints"
        enc = json.dumps(
            _encoder_config(run.config, run.num_layers), indent=2
        ).encode()  # a complete artefact
        _save_adapter_files(run.model, ckdir / name, {STATE_FILE: buf.getvalue(), ENCODER_CONFIG: enc})
        atomic_write_text(ckdir / "latest", name + "\n")
        old = sorted((p for p in ckdir.glob("step-*") if p.name != name), key=lambda p: int(p.name[5:]))
        for p in old[: max(0, len(old) - (run.config.save_total_limit - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    if run.world > 1:
        dist.barrier()


def _finalise(run: _Run) -> None:
    """Rank 0 writes the final adapter and ``bellm_encoder.json`` into the output directory (the encoder
    config last, so a directory that has it is complete)."""
    if run.rank == 0:
        final = run.out / ".final"
        enc = json.dumps(_encoder_config(run.config, run.num_layers), indent=2).encode()
        _save_adapter_files(run.model, final, {ENCODER_CONFIG: enc})
        for p in sorted(final.iterdir(), key=lambda p: p.name == ENCODER_CONFIG):
            os.replace(p, run.out / p.name)
        shutil.rmtree(final, ignore_errors=True)
    if run.world > 1:
        import torch.distributed as dist

        dist.barrier()


def train(config: TrainConfig) -> dict:
    """Run training; returns ``{"step", "loss", "best_metric", "best_step", "output_dir"}``.

    The steps: :func:`_set_up` (distributed init, data, output directory, model, optimizer), :func:`_resume`,
    then per optimizer step :func:`_optimization_step`, :func:`_log_and_evaluate` and every ``save_steps``
    :func:`_save_checkpoint`, and :func:`_finalise`.

    Raises DataError/FileNotFoundError for bad data, ValueError for a bad setting (from_layer out of range, a
    resume with another configuration), FileExistsError for an output dir holding another run,
    FloatingPointError for a NaN/inf loss (naming the step; nothing is saved for that step, the last
    checkpoint stays intact).
    """
    from tqdm.auto import tqdm

    check_config(config)
    run, resume_from = _set_up(config)
    _resume(run, resume_from)
    _wrap_distributed(run)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if run.device.type == "cuda" and config.bf16_autocast
        else torch.autocast("cpu", enabled=False)
    )
    bar = tqdm(
        total=run.total_steps,
        initial=run.step,
        desc="bellm train",
        disable=not config.progress or run.rank > 0,
        dynamic_ncols=True,
    )
    last_loss = float("nan")
    t0, tokens_since = time.perf_counter(), 0
    with bar:
        while run.step < run.total_steps:
            last_loss, step_tokens, lr = _optimization_step(run, autocast)
            tokens_since += step_tokens * run.world
            elapsed = time.perf_counter() - t0
            tok_s = tokens_since / elapsed if elapsed > 0 else 0.0
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}")
            _log_and_evaluate(run, last_loss, lr, tok_s)
            if config.save_steps and run.step % config.save_steps == 0 and run.step < run.total_steps:
                _save_checkpoint(run)
    _finalise(run)
    return {
        "step": run.step,
        "loss": last_loss,
        "best_metric": run.best_metric,
        "best_step": run.best_step,
        "output_dir": str(run.out),
    }
