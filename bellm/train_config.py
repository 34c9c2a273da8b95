"""``TrainConfig``: every setting of a training run (:func:`bellm.train`), in a module light enough for the
command line to read its fields and defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from bellm.common import BELLM_PROMPT

__all__ = ["TrainConfig"]


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
