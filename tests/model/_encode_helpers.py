"""Shared by the encode tests: a tiny character-level tokenizer (offline, built in memory) and a naive padded
reference encoder (unpatched transformers model, HF sdpa, masked pooling)."""

from __future__ import annotations

import functools

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


@functools.lru_cache(maxsize=1)
def _char_tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for c in range(32, 127):
        vocab[chr(c)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok.to_str()


def char_tokenizer():
    """A ``PreTrainedTokenizerFast``: one token per printable ASCII character (ids 4..98), BOS ``<s>`` (1)
    prepended, pad ``<pad>`` (0), right padding. Fits a tiny model with ``vocab=128``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_char_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
    )


def naive_encode(
    model,
    tokenizer,
    texts,
    *,
    pooling="last",
    prompt="{text}",
    batch_size=3,
    bidirectional=False,
    normalize=False,
    text_only=False,
):
    """Padded-batch reference: the (unpatched) model with its own attention and mask, pooling over the real
    tokens.

    ``bidirectional`` sets ``config.is_causal = False`` (transformers' model-wide switch) for the duration.
    ``text_only`` pools only the text's tokens (via offsets), like ``exclude_prompt``.
    """
    from bellm_kernels import reference

    head, tail = prompt.split("{text}")
    outs = []
    old = getattr(model.config, "is_causal", None)
    if bidirectional:
        model.config.is_causal = False
    try:
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            enc = tokenizer(
                [head + t + tail for t in chunk],
                padding=True,
                return_tensors="pt",
                return_offsets_mapping=True,
            )
            mask = enc["attention_mask"]
            with torch.no_grad():
                hidden = model(input_ids=enc["input_ids"], attention_mask=mask).last_hidden_state
            pool_mask = None
            if text_only:
                off = enc["offset_mapping"]
                lo = torch.tensor([len(head)] * len(chunk))[:, None]
                hi = torch.tensor([len(head) + len(t) for t in chunk])[:, None]
                pool_mask = (off[..., 1] > off[..., 0]) & (off[..., 0] < hi) & (off[..., 1] > lo)
            outs.append(
                reference.pool(
                    hidden, mode=pooling, attention_mask=mask, normalize=normalize, pool_mask=pool_mask
                )
            )
    finally:
        if bidirectional:
            if old is None:
                del model.config.is_causal
            else:
                model.config.is_causal = old
    return torch.cat(outs).float()


SENTENCES = [
    "A man is playing a flute.",
    "Hi",
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "A woman slices an onion.",
    "x",
    "Two dogs run across a field of tall green grass!",
    "Stocks fell sharply on Monday.",
    "",
    "It rains.",
    "A child rides a red bicycle down the hill, laughing loudly.",
]


class FakeEncoder:
    """Stands in for :class:`bellm.Encoder` in corpus tests: a deterministic embedding per text (a seeded RNG
    on the text's sha256), ``sleep`` seconds per call so a test can kill a run mid-way; counts the texts it
    encoded."""

    dim = 8

    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep
        self.encoded = 0

    def config_dict(self) -> dict:
        return {"fake": True}

    def encode_with_stats(self, texts, **kwargs):
        import hashlib
        import time

        import numpy as np

        time.sleep(self.sleep)
        rows = [
            np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).standard_normal(
                self.dim
            )
            for t in texts
        ]
        self.encoded += len(texts)
        emb = torch.tensor(np.array(rows, dtype=np.float32).reshape(len(texts), self.dim))
        return emb, {"tokens": sum(len(t) for t in texts), "seconds": max(self.sleep, 1e-3)}
