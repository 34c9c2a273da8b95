"""``Encoder``: sentences in, embeddings out, through a (BeLLM-)patched decoder LLM on packed varlen batches.

The hot path of one :meth:`Encoder.encode` call::

    sentences -> prompt template -> tokenizer (once, no padding, truncating only the text part)
      -> plan_batches (longest first, under a token budget)
      -> pack (input_ids (1, T), position_ids, cu_seqlens)
      -> patched model under inference_mode -> last hidden state (T, dim)
      -> bellm_kernels.pool(mode, cu_seqlens, normalize fused) (n, dim)
      -> restore input order -> numpy / tensor

No padding token is ever computed. On CPU the model's attention runs through :mod:`bellm_kernels.reference`.

Prompts are ``{text}`` templates. With ``pooling="last"`` the default is BeLLM's
``The representative word for sentence {text} is:"`` (:data:`BELLM_PROMPT`): the last token is then always the
closing ``"`` and its hidden state is the embedding. With other poolings the default is no prompt (``"{text}"``).
``prompt=""`` or ``prompt="{text}"`` disables the prompt.

Note (docs/bidirectional.md, section 1): with ``from_layer = num_layers - 1`` and last-token pooling, the embedding
equals the causal model's exactly: the last query already sees every key in a causal layer and nothing reads the other
positions after the last layer.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
import torch

import bellm_kernels
from bellm.common import BELLM_PROMPT, ENCODER_CONFIG, POOLING_MODES, check_pooling, resolve_prompt
from bellm.packing import pack, plan_batches
from bellm.tokenization import tokenize_prompted

__all__ = ["Encoder", "BELLM_PROMPT", "POOLING_MODES", "default_max_tokens_per_batch"]

_PROGRESS_THRESHOLD = 1000  # show_progress_bar=None shows a bar from this many sentences on
_ENCODE_KWARGS = (
    "batch_size",
    "max_tokens_per_batch",
    "prompt",
    "normalize_embeddings",
    "convert_to_numpy",
    "convert_to_tensor",
    "show_progress_bar",
    "device",
)


def default_max_tokens_per_batch(device: torch.device | str) -> int:
    """Token budget of one packed micro-batch: 16384 on CUDA, 4096 on CPU."""
    return 16384 if torch.device(device).type == "cuda" else 4096


def _check_sentences(sentences) -> tuple[list[str], bool]:
    """``(list of str, was_single_str)``; TypeError naming the first bad item."""
    if sentences is None:
        raise TypeError("sentences is None; pass a str or a list of str")
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, (bytes, dict)) or not isinstance(sentences, (Sequence, np.ndarray)):
        raise TypeError(f"sentences must be a str or a list of str, got {type(sentences).__name__}")
    items = list(sentences)
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise TypeError(
                f"sentences[{i}] is {type(s).__name__} ({s!r:.60}), not str; every item must be a str"
            )
    return items, False


def _num_layers(model) -> int:
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if n is None and config is not None and hasattr(config, "get_text_config"):
        n = getattr(config.get_text_config(), "num_hidden_layers", None)
    if n is None:
        raise ValueError(
            f"cannot tell the number of layers of {type(model).__name__} (no config.num_hidden_layers)"
        )
    return int(n)


def _saved_bellm_config(model) -> dict:
    """The ``config.bellm`` record that :func:`bellm.patch` leaves on a model (empty dict when absent)."""
    record = getattr(getattr(model, "config", None), "bellm", None)
    if record is None:
        return {}
    if isinstance(record, dict):
        return record
    return dict(vars(record)) if hasattr(record, "__dict__") else {}


def _apply_adapter(model, adapter: str | os.PathLike):
    """Load a peft adapter onto ``model`` and merge it (inference only). Clear errors for missing /
    mismatched ones."""
    from peft import PeftConfig, PeftModel

    path = Path(adapter)
    if not path.exists():
        raise FileNotFoundError(f"adapter path {str(path)!r} does not exist; pass a directory saved by peft")
    try:
        adapter_config = PeftConfig.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - re-raised with the path named
        raise ValueError(
            f"{str(path)!r} is not a peft adapter directory (no readable adapter_config.json): {err}"
        ) from err
    base = getattr(adapter_config, "base_model_name_or_path", None)
    model_name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"adapter {str(path)!r} does not fit this model: it was trained on base model {base!r}, "
            f"the model loaded is {model_name!r} ({type(model).__name__}, "
            f"hidden {getattr(model.config, 'hidden_size', '?')}). "
            f"Load the adapter's base model. Original error: {str(err).splitlines()[0][:300]}"
        ) from err
    return peft_model.merge_and_unload()


class Encoder:
    """A decoder LLM wrapped as a sentence encoder (sentence-transformers-like :meth:`encode`).

    ``Encoder(model, tokenizer, ...)`` wraps objects already in memory; :meth:`from_pretrained` loads them.
    The model is :func:`bellm.patch`-ed in place so it accepts packed batches: with ``from_layer=k`` layers
    ``>= k`` become bidirectional; ``from_layer=None`` keeps a record the model already carries
    (``config.bellm``), else patches with ``from_layer=num_layers`` (all layers causal, but on bellm's packed
    attention path).

    Args:
        pooling: ``"last"`` (default; BeLLM), ``"mean"`` or ``"first"``.
        prompt: a ``{text}`` template, see the module docstring for the default; ``""`` disables it.
        max_length: tokens per sentence, prompt and special tokens included (default: the model's
            ``max_position_embeddings``). Longer inputs lose tokens from the end of the *text* part only, so
            the prompt's tail (the pooled last token) survives; one warning says how many were truncated.
        exclude_prompt: pool only over the text's tokens (meaningful for mean pooling), not the prompt's.
        max_tokens_per_batch: default token budget of one packed micro-batch
            (:func:`default_max_tokens_per_batch`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        from_layer: int | None = None,
        pooling: str = "last",
        prompt: str | None = None,
        max_length: int | None = None,
        billm_compat: bool = False,
        exclude_prompt: bool = False,
        max_tokens_per_batch: int | None = None,
    ):
        from bellm.surgery import patch

        self.pooling = check_pooling(pooling)
        self.prompt = resolve_prompt(prompt, pooling)
        self.exclude_prompt = bool(exclude_prompt)
        self.tokenizer = tokenizer
        self.num_layers = _num_layers(model)
        saved = _saved_bellm_config(model)
        if from_layer is None:
            from_layer = saved.get("from_layer", self.num_layers)
            billm_compat = bool(saved.get("billm_compat", billm_compat))
        self.model = patch(model, from_layer=from_layer, billm_compat=billm_compat).eval()
        self.from_layer = from_layer if from_layer >= 0 else self.num_layers + from_layer
        self.billm_compat = billm_compat
        if max_length is None:
            max_length = getattr(model.config, "max_position_embeddings", None) or 8192
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = int(max_length)
        self.max_tokens_per_batch = max_tokens_per_batch

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        from_layer: int | None = None,
        adapter: str | os.PathLike | None = None,
        pooling: str = "last",
        prompt: str | None = None,
        dtype=None,
        device=None,
        max_length: int | None = None,
        billm_compat: bool = False,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        exclude_prompt: bool = False,
        max_tokens_per_batch: int | None = None,
    ) -> Encoder:
        """Load a local transformers model (or a ``.gguf``; ``None`` = the real SmolLM2-135M) as an Encoder.

        ``adapter``: a peft adapter directory, loaded and merged; a missing path raises FileNotFoundError, one
        made for another base model raises ValueError naming both. A ``bellm_encoder.json`` in the adapter
        directory (``bellm train`` writes one) or, failing that, in the model directory (written by
        :meth:`save_pretrained`) restores pooling/prompt/from_layer/max_length unless given here. Nothing is
        downloaded; ``trust_remote_code`` stays off unless passed.
        """
        from bellm.models import load_model_and_tokenizer

        check_pooling(pooling)
        saved = {}
        for directory in (adapter, model_name_or_path):
            if directory is not None and (Path(directory) / ENCODER_CONFIG).is_file():
                saved = json.loads((Path(directory) / ENCODER_CONFIG).read_text())
                break
        model, tokenizer = load_model_and_tokenizer(
            model_name_or_path,
            gguf_file=gguf_file,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
        )
        if adapter is not None:
            model = _apply_adapter(model, adapter)
        if saved:
            from_layer = saved.get("from_layer") if from_layer is None else from_layer
            billm_compat = billm_compat or saved.get("billm_compat", False)
            if pooling == "last" and prompt is None:  # the call left both at their defaults
                pooling, prompt = saved.get("pooling", pooling), saved.get("prompt")
            max_length = max_length or saved.get("max_length")
            exclude_prompt = exclude_prompt or saved.get("exclude_prompt", False)
        return cls(
            model,
            tokenizer,
            from_layer=from_layer,
            pooling=pooling,
            prompt=prompt,
            max_length=max_length,
            billm_compat=billm_compat,
            exclude_prompt=exclude_prompt,
            max_tokens_per_batch=max_tokens_per_batch,
        )

    def config_dict(self) -> dict:
        """The settings that :meth:`save_pretrained` writes (and :meth:`from_pretrained` restores)."""
        return {
            "from_layer": self.from_layer,
            "pooling": self.pooling,
            "prompt": self.prompt,
            "max_length": self.max_length,
            "billm_compat": self.billm_compat,
            "exclude_prompt": self.exclude_prompt,
        }

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the model (safetensors), tokenizer and ``bellm_encoder.json`` to ``path``."""
        from bellm._io import atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))
        atomic_write_json(path / ENCODER_CONFIG, self.config_dict())

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def to(self, device) -> Encoder:
        self.model.to(device)
        return self

    # ------------------------------------------------------------------ tokenization
    def tokenize(
        self, sentences: Sequence[str], prompt: str | None = None
    ) -> tuple[list[list[int]], list, int]:
        """Tokenize prompted sentences once (special tokens as the tokenizer adds them, no padding).

        Returns ``(token_ids, text_masks, num_truncated)``: ``text_masks[i]`` marks the tokens of sentence i
        that come from the text itself (not the prompt or special tokens), or is None when the tokenizer gives
        no offsets. Sequences over ``max_length`` lose text tokens from the end of the text; ValueError when
        the prompt and special tokens alone exceed ``max_length`` (:func:`bellm.tokenization.tokenize_prompted`).
        """
        template = self.prompt if prompt is None else resolve_prompt(prompt, self.pooling)
        return tokenize_prompted(self.tokenizer, sentences, template, self.max_length)

    # ------------------------------------------------------------------ encoding
    def _hidden(self, batch) -> torch.Tensor:
        """Last hidden state ``(T, dim)`` of one packed batch.

        Runs the decoder backbone (``model.base_model``): for a ``*ForCausalLM`` this skips the vocabulary-sized
        LM head, whose logits an encoder never reads.
        """
        model = self.model
        # an unmerged peft model: its LoRA layers stay injected in the base model
        if callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        backbone = getattr(model, "base_model", model)
        return backbone(**batch.model_kwargs(), use_cache=False).last_hidden_state[0]

    def _encode(
        self,
        sentences: list[str],
        *,
        batch_size=None,
        max_tokens_per_batch=None,
        prompt=None,
        normalize=False,
        progress=False,
    ) -> tuple[torch.Tensor, int]:
        """Embeddings ``(n, dim)`` float32 on the model's device in input order, and the number of tokens
        run."""
        ids, masks, num_truncated = self.tokenize(sentences, prompt)
        if num_truncated:
            warnings.warn(
                f"{num_truncated} of {len(ids)} sentences were longer than max_length={self.max_length} "
                "tokens and were truncated (the end of the text dropped, the prompt kept)",
                stacklevel=3,
            )
        device = self.device
        budget = max_tokens_per_batch or self.max_tokens_per_batch or default_max_tokens_per_batch(device)
        out = torch.zeros(len(ids), self.dim, dtype=torch.float32, device=device)
        nonempty = [
            i for i, t in enumerate(ids) if t
        ]  # a zero-token input (empty text, no prompt) stays zero
        lengths = [len(ids[i]) for i in nonempty]
        total = sum(lengths)
        use_mask = self.exclude_prompt and all(masks[i] is not None for i in nonempty)
        if self.exclude_prompt and not use_mask:
            raise ValueError(
                "exclude_prompt=True needs a fast tokenizer (offsets); this tokenizer gives none"
            )
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, desc="encode") as bar:
            for local in plan_batches(lengths, budget, batch_size):
                rows = [nonempty[j] for j in local]
                batch = pack(ids, rows).to(device)
                pool_mask = None
                if use_mask:
                    pool_mask = torch.tensor(
                        [m for r in rows for m in masks[r]], dtype=torch.bool, device=device
                    )
                with torch.inference_mode():
                    hidden = self._hidden(batch)
                    pooled = bellm_kernels.pool(
                        hidden,
                        mode=self.pooling,
                        cu_seqlens=batch.cu_seqlens,
                        normalize=normalize,
                        pool_mask=pool_mask,
                    )
                out[torch.tensor(rows, device=device)] = pooled.float()
                bar.update(batch.num_tokens)
        return out, total

    @overload
    def encode(
        self,
        sentences: str,
        *,
        batch_size: int | None = None,
        max_tokens_per_batch: int | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        device: str | torch.device | None = None,
    ) -> np.ndarray | torch.Tensor: ...  # one embedding, shape (dim,)

    @overload
    def encode(
        self,
        sentences: Sequence[str] | np.ndarray,
        *,
        batch_size: int | None = None,
        max_tokens_per_batch: int | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        device: str | torch.device | None = None,
    ) -> np.ndarray | torch.Tensor | list[torch.Tensor]: ...  # one row per sentence, shape (n, dim)

    def encode(
        self,
        sentences,
        *,
        batch_size: int | None = None,
        max_tokens_per_batch: int | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        device=None,
        **kwargs,
    ):
        """Embed ``sentences`` (sentence-transformers' ``encode`` contract).

        Args:
            sentences: one ``str``, or a list (any sequence or 1-D array) of ``str``.
            batch_size: at most this many sentences per packed batch (default: no limit besides the token
                budget).
            max_tokens_per_batch: token budget of one packed batch (default: the encoder's, else
                :func:`default_max_tokens_per_batch`). Batching never changes the embeddings.
            prompt: a ``{text}`` template for this call instead of the encoder's; ``""`` for none.
            normalize_embeddings: L2-normalise each embedding (fused into the pooling kernel).
            convert_to_numpy: return float32 numpy (the default).
            convert_to_tensor: return a float32 torch tensor on the model's device (takes precedence).
            show_progress_bar: a token progress bar; ``None`` shows one from 1000 sentences on.
            device: move the model there first.

        Returns:
            For a ``str``: one embedding of shape ``(dim,)``. For a list: shape ``(n, dim)``, rows in input
            order (``[]`` gives ``(0, dim)``). numpy by default; a tensor with ``convert_to_tensor``; with both
            conversions off a 1-D tensor for a ``str`` and a list of ``n`` 1-D tensors for a list.

        Raises:
            TypeError: ``sentences`` is None, not a str or list, or holds a non-str item (the index is named);
                an unknown keyword argument (the valid ones are listed).
            ValueError: the prompt and special tokens alone exceed the encoder's ``max_length``;
                ``exclude_prompt`` with a tokenizer that gives no offsets.

        Example:
            >>> enc = bellm.Encoder.from_pretrained("path/to/model", from_layer=20)  # doctest: +SKIP
            >>> enc.encode("A man plays the flute.").shape  # doctest: +SKIP
            (576,)
            >>> enc.encode(["A man plays the flute.", "A dog runs."], normalize_embeddings=True).shape  # doctest: +SKIP
            (2, 576)
        """
        if kwargs:
            raise TypeError(
                f"encode() got unexpected keyword argument(s) {', '.join(sorted(kwargs))}; "
                f"valid ones are: {', '.join(_ENCODE_KWARGS)}"
            )
        items, single = _check_sentences(sentences)
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        if show_progress_bar is None:
            show_progress_bar = len(items) >= _PROGRESS_THRESHOLD
        emb, _ = self._encode(
            items,
            batch_size=batch_size,
            max_tokens_per_batch=max_tokens_per_batch,
            prompt=prompt,
            normalize=normalize_embeddings,
            progress=show_progress_bar,
        )
        if convert_to_tensor:
            return emb[0] if single else emb
        if convert_to_numpy:
            arr = emb.cpu().numpy()
            return arr[0] if single else arr
        return emb[0] if single else list(emb)

    def encode_with_stats(self, sentences: list[str], **kwargs) -> tuple[torch.Tensor, dict]:
        """``(embeddings (n, dim) float32 tensor, {"tokens", "seconds"})``: for progress reporting (corpus
        encode)."""
        items, _ = _check_sentences(sentences)
        t0 = time.perf_counter()
        emb, tokens = self._encode(items, **kwargs)
        if emb.is_cuda:
            torch.cuda.synchronize()
        return emb, {"tokens": tokens, "seconds": time.perf_counter() - t0}

    def __repr__(self) -> str:
        return (
            f"Encoder({type(self.model).__name__}, from_layer={self.from_layer}/{self.num_layers}, "
            f"pooling={self.pooling!r}, prompt={self.prompt!r}, max_length={self.max_length})"
        )
