"""Tiny random-weight transformers models built from configs (no download), shared by the model-level tests."""

from __future__ import annotations

import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


def tiny_config(
    family: str = "llama",
    *,
    num_layers: int = 3,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    attn_implementation: str = "eager",
    **overrides,
):
    """A 2-4 layer config with hidden 64 and GQA (4 query heads, 2 kv heads) for ``family``."""
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma2": transformers.Gemma2Config,
        "gemma3": transformers.Gemma3TextConfig,
        "phi3": transformers.Phi3Config,
    }[family]
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family in ("qwen3", "gemma2", "gemma3"):
        kwargs["head_dim"] = hidden // heads
    kwargs.update(overrides)
    config = cls(**kwargs)
    config._attn_implementation = attn_implementation
    return config


def tiny_model(
    family: str = "llama", *, seed: int = 0, causal_lm: bool = False, dtype=torch.float32, **config_kw
):
    """A random-weight base model (``*Model``), or ``*ForCausalLM`` with ``causal_lm``, in eval mode."""
    import transformers

    config = tiny_config(family, **config_kw)
    torch.manual_seed(seed)
    auto = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
    model = auto.from_config(config, attn_implementation=config._attn_implementation, dtype=dtype)
    return model.eval()
