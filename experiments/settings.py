"""What decides the numbers of a reproduction: :class:`Settings`, the presets, the paper's rows."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["ReproduceError", "Settings", "PAPER_PRESET", "PAPER_ROWS", "PAPER_DELTA"]

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
    # The depth study (``--depth-study``): every trained arm with every seed, the middle depth (L//2) added, a
    # longer budget (``long_multiple`` x the steps, causal and the best bidirectional depth, the first
    # ``long_seeds`` seeds) and one seed of causal and of that depth scored on every test pair.
    depth_study: bool = False
    depth_seeds: int | None = None  # seeds per arm besides causal and BeLLM in the depth study (None: all)
    long_multiple: int = 4
    long_seeds: int = 3
    full_max_pairs: int | None = None  # the full-protocol check: None = every pair (the smoke caps it)
    smoke: bool = False

    @classmethod
    def from_saved(cls, saved: dict) -> Settings:
        """Settings from a ``settings.json``; a key it lacks (written before the key existed) takes its
        default."""
        return cls(**{k: v for k, v in saved.items() if k in {f.name for f in fields(cls)}})

    @classmethod
    def smoke_settings(cls, **overrides) -> Settings:
        """The CI smoke: two seeds, one step of two triplets, a LoRA of rank 8, 4 pairs per STS task, 12 dev
        pairs; with the depth study the other arms with the first seed (as without it), 2x the steps for one
        seed and 8 pairs per task for the full-protocol check."""
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
            depth_seeds=1,
            long_multiple=2,
            long_seeds=1,
            full_max_pairs=8,
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
