"""The settings of one training run (:class:`TrainConfig`), kept apart from the trainer so that reading them
(``bellm train --help``, a resumed run's check) needs no torch import."""

from __future__ import annotations

from dataclasses import dataclass

from bellm.common import BELLM_PROMPT, check_pooling
from bellm.errors import UsageError

__all__ = ["TrainConfig", "RESUME_FREE", "check_config"]

# fields that may change between a run and its resume without changing the result; output_dir is the folder
# itself (any spelling of it), data / eval_data / model are compared by content (the run record's "identity")
RESUME_FREE = {
    "resume",
    "overwrite",
    "progress",
    "save_steps",
    "save_total_limit",
    "device",
    "output_dir",
    "data",
    "eval_data",
    "model",
}


@dataclass
class TrainConfig:
    """Everything a run needs. ``batch_size`` is examples per micro-batch per process; one optimizer step sees
    ``batch_size * grad_accum * world_size`` examples. ``max_steps`` (optimizer steps) overrides
    ``epochs``."""

    data: str
    output_dir: str
    model: str | None = None  # local dir or .gguf; None = the real SmolLM2-135M GGUF
    gguf_file: str | None = None
    from_layer: int = -1  # layers >= k bidirectional; negative counts from the end
    prompt: str = BELLM_PROMPT
    pooling: str = "last"  # "last" (BeLLM) | "mean" | "first": how a text's embedding is pooled
    max_length: int = 60  # tokens per prompted text, prompt included (the paper's 60)
    data_kind: str = "auto"  # "triplets" | "pairs" | "auto"
    max_examples: int | None = None
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.1
    cosine_w: float = 0.0
    ibn_w: float = 20.0
    angle_w: float = 1.0
    cosine_tau: float = 20.0
    ibn_tau: float = 20.0
    angle_tau: float = 20.0
    batch_size: int = 32
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 80
    scheduler: str = "linear"  # "linear" | "cosine" | "constant"
    max_grad_norm: float | None = 1.0
    seed: int = 42
    dtype: str | None = None  # None: bf16 weights on CUDA, fp32 on CPU
    load_in_4bit: bool = False
    bf16_autocast: bool = True  # on CUDA only
    gradient_checkpointing: bool = False
    device: str | None = None
    eval_data: str | None = None  # scored pairs (e.g. STS-B dev); Spearman of cosine every eval_steps
    eval_steps: int = 0
    eval_max_pairs: int | None = None
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 1
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def check_config(config: TrainConfig) -> None:
    """:class:`bellm.errors.UsageError` (a ValueError) naming the first bad setting, before anything is read
    or loaded; ``from_layer`` is checked against the layer count in the model's files (no model load)."""
    from bellm.models import num_layers_of
    from bellm.train_data import prompt_template_check

    for name in ("batch_size", "grad_accum", "epochs", "max_length", "lora_r", "logging_steps"):
        if getattr(config, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps < 1:
        raise UsageError(f"max_steps must be >= 1, got {config.max_steps}")
    if config.resume and config.overwrite:
        raise UsageError("pass --resume or --overwrite, not both")
    try:
        check_pooling(config.pooling)
        prompt_template_check(config.prompt)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    if config.eval_steps and not config.eval_data:
        raise UsageError("eval_steps needs eval_data (a scored-pairs file such as STS-B dev)")
    n = num_layers_of(config.model, config.gguf_file)
    if n is not None and not -n <= config.from_layer <= n:
        raise UsageError(
            f"from_layer = {config.from_layer} is out of range for this {n}-layer model; use "
            f"0..{n} or -{n}..-1 (counted from the end)"
        )
