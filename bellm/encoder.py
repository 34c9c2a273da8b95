"""``Encoder``: sentences in, embeddings out, through a (BeLLM-)patched decoder LLM on packed varlen batches.

The hot path of one :meth:`Encoder.encode` call::

    sentences -> prompt template -> tokenizer (once, no padding, truncating only the text part)
      -> plan_batches (longest first, under a token budget)
      -> pack (input_ids (1, T), position_ids, cu_seqlens)
      -> patched model under inference_mode -> last hidden state (T, dim)
      -> bellm_kernels.pool(mode, cu_seqlens, normalize fused) (n, dim)
      -> restore input order -> numpy / tensor

No padding token is ever computed. On CPU the model's attention runs through :mod:`bellm_kernels.cpu` (SDPA).

Prompts are ``{text}`` templates. With ``pooling="last"`` the default is BeLLM's
``The representative word for sentence {text} is:"`` (:data:`BELLM_PROMPT`): the last token is then always the
closing ``"`` and its hidden state is the embedding. With other poolings the default is no prompt (``"{text}"``).
``prompt=""`` or ``prompt="{text}"`` disables the prompt.

Note (docs/bidirectional.md, section 1): with ``from_layer = num_layers - 1`` and last-token pooling, the embedding
equals the causal model's exactly: the last query already sees every key in a causal layer and nothing reads the other
positions after the last layer.

Isolation: an Encoder owns its setting (``from_layer``, ``billm_compat``), not the model's. Several Encoders may
share one model object; before every encode an Encoder checks the setting the model's layers actually run
(:func:`bellm.surgery.patched_setting`, one pass over the layers) and re-applies its own when another Encoder or a
direct :func:`bellm.patch` changed it. Encoders sharing one model must not encode concurrently from several
threads (the layers' flags are the model's).

Saving: :meth:`Encoder.save_pretrained` writes a whole folder (model safetensors, tokenizer,
``bellm_encoder.json``) through a temporary folder renamed on success, so an interrupted save leaves nothing
half-written. A model loaded from a GGUF file saves its de-quantised float weights.
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

DEFAULT_MAX_LENGTH = 512  # tokens per sentence unless max_length says otherwise (or the model allows fewer)
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
    """Token budget of one packed micro-batch: 16384 on CUDA, 4096 on CPU.

    On CPU, chosen by measurement (``python -m benchmarks.bench_cpu --groups stsb-budget``, BENCHMARKS.md's CPU
    section): of the 1k/2k/4k/8k budgets, 4k encoded short sentences fastest on an idle 2-core machine (8k was
    about 17% slower and took about 12% more peak memory; 1k paid the most per-forward overhead). A single input
    longer than the budget still runs alone, so the budget never limits the input length."""
    return 16384 if torch.device(device).type == "cuda" else 4096


def _check_count(name: str, value, *, none_ok: bool = True) -> int | None:
    """``value`` as an int >= 1 (numpy integers too), or None when allowed; TypeError / ValueError naming it."""
    import numbers

    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int >= 1{' or None' if none_ok else ''}, got {value!r} "
            f"({type(value).__name__})"
        )
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


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


def _raise_for_unencodable(sentences: Sequence[str], err: Exception) -> None:
    """ValueError naming the first sentence that is not valid Unicode text (a lone surrogate, e.g. from
    ``errors="surrogateescape"`` decoding), with the character position; returns when every one is valid."""
    for i, s in enumerate(sentences):
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as bad:
            raise ValueError(
                f"sentences[{i}] holds a lone surrogate {s[bad.start]!r} at character {bad.start}, which is not "
                "valid Unicode text and cannot be tokenized; fix or drop it (e.g. "
                "s.encode('utf-8', 'replace').decode('utf-8'))"
            ) from err


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


def _check_adapter_files(adapter: str | os.PathLike) -> None:
    """FileNotFoundError for a missing adapter folder; :class:`bellm.errors.DataFileError` (one line, naming
    the file) for an unreadable ``adapter_config.json`` or a damaged ``adapter_model.safetensors`` header."""
    from safetensors import safe_open

    from bellm.errors import DataFileError

    path = Path(adapter)
    if not path.is_dir():
        raise FileNotFoundError(f"adapter path {str(path)!r} does not exist; pass a directory saved by peft")
    config = path / "adapter_config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataFileError(
            f"{config}: not a readable adapter config ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
            "pass a folder saved by peft or bellm train"
        ) from None
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                list(f.keys())
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error type; named here
            raise DataFileError(
                f"{weights}: damaged adapter weights ({' '.join(str(err).split())[:160]}); use another "
                "checkpoint of the run (checkpoints/step-N) or retrain"
            ) from None


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
        max_length: tokens per sentence, prompt and special tokens included (default 512, or the model's
            ``max_position_embeddings`` when smaller: a sentence encoder rarely needs more, and attention
            cost grows with the square of the length). Longer inputs lose tokens from the end of the *text*
            part only, so the prompt's tail (the pooled last token) survives; one warning per call says how
            many were truncated and how to raise the limit.
        exclude_prompt: pool only over the text's tokens (meaningful for mean pooling), not the prompt's.
        max_tokens_per_batch: default token budget of one packed micro-batch
            (:func:`default_max_tokens_per_batch`).

    Raises TypeError for a non-int ``from_layer`` / ``max_length`` / ``max_tokens_per_batch`` (floats
    included; numpy integers are fine), ValueError for values < 1 or out of range and for a bad prompt.
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
        from bellm.models import forget_gguf_quantizer
        from bellm.surgery import patch, patched_setting

        self.pooling = check_pooling(pooling)
        self.prompt = resolve_prompt(prompt, pooling)
        self.exclude_prompt = bool(exclude_prompt)
        self.max_tokens_per_batch = _check_count("max_tokens_per_batch", max_tokens_per_batch)
        max_length = _check_count("max_length", max_length)
        self.tokenizer = tokenizer
        self.num_layers = _num_layers(model)
        saved = _saved_bellm_config(model)
        if from_layer is None:
            from_layer = saved.get("from_layer", self.num_layers)
            billm_compat = bool(saved.get("billm_compat", billm_compat))
        self.model = patch(model, from_layer=from_layer, billm_compat=billm_compat).eval()
        forget_gguf_quantizer(self.model)  # a GGUF-loaded model saves its de-quantised weights
        self.from_layer = patched_setting(self.model)["from_layer"]  # normalised to 0..num_layers
        self.billm_compat = bool(billm_compat)
        if max_length is None:
            model_limit = getattr(model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
            max_length = min(DEFAULT_MAX_LENGTH, model_limit)
        self.max_length = max_length

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
        from bellm.run_record import read_record

        if adapter is not None:
            _check_adapter_files(adapter)  # before the (long) model load
        saved = {}
        for directory in (adapter, model_name_or_path):
            if directory is not None and (Path(directory) / ENCODER_CONFIG).is_file():
                saved = read_record(
                    Path(directory) / ENCODER_CONFIG,
                    what="encoder settings file",
                    fix="restore it, or delete it and pass from_layer / pooling / prompt / max_length yourself",
                )
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
        """Write the model (safetensors), tokenizer and ``bellm_encoder.json`` as the new folder ``path``.

        Written into a temporary folder beside ``path`` and renamed on success: an interrupted or failed save
        leaves no folder behind. ``path`` must not exist or be empty (FileExistsError, nothing written).
        Load it back with :meth:`from_pretrained` (or :func:`bellm.load` for the model alone); plain
        ``AutoModel.from_pretrained`` refuses to run it as a causal model (see :mod:`bellm.surgery`).
        """
        from bellm._io import atomic_dir

        with atomic_dir(path) as tmp:
            self.write_files(tmp)

    def write_files(self, directory: str | os.PathLike) -> None:
        """Write the model, tokenizer and ``bellm_encoder.json`` into the existing folder ``directory``
        (not atomic; :meth:`save_pretrained` wraps it)."""
        directory = Path(directory)
        self._ensure_own_setting()  # the saved config.bellm is this Encoder's setting
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        (directory / ENCODER_CONFIG).write_text(json.dumps(self.config_dict(), indent=2) + "\n")

    def _ensure_own_setting(self) -> None:
        """Re-apply this Encoder's setting if the model's layers run another (see the module docstring)."""
        from bellm.surgery import patch, patched_setting

        own = {"from_layer": self.from_layer, "billm_compat": self.billm_compat}
        if patched_setting(self.model) != own:
            patch(self.model, **own)

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
        try:
            return tokenize_prompted(self.tokenizer, sentences, template, self.max_length)
        except (TypeError, UnicodeError) as err:  # the tokenizer's error names no sentence
            _raise_for_unencodable(sentences, err)
            raise

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
        max_tokens_per_batch = _check_count("max_tokens_per_batch", max_tokens_per_batch)
        batch_size = _check_count("batch_size", batch_size)
        ids, masks, num_truncated = self.tokenize(sentences, prompt)
        if num_truncated:
            warnings.warn(
                f"{num_truncated} of {len(ids)} sentences were longer than max_length={self.max_length} "
                "tokens and were truncated (the end of the text dropped, the prompt kept); pass a larger "
                "max_length to keep more",
                stacklevel=3,
            )
        self._ensure_own_setting()
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
