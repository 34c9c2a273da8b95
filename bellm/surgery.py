"""Per-layer bidirectional attention for Hugging Face decoder LLMs, through transformers' own registries.

``patch(model, from_layer=k)`` makes attention layers ``>= k`` bidirectional, keeps layers ``< k`` causal,
and routes every layer's attention through :func:`bellm_kernels.attention`. No model class is copied. This
module is the only place in bellm that knows transformers' attention API (transformers >= 5.17):

- an attention function ``"bellm"`` is registered with ``transformers.AttentionInterface`` and a mask
  function ``"bellm"`` with ``transformers.masking_utils.AttentionMaskInterface`` (without the latter,
  transformers silently drops the padding mask). The mask function returns the 2D bool padding mask
  ``(batch, kv_len)``, True = real token, or ``None`` when nothing is padded, like transformers'
  ``flash_attention_mask``: one mask serves causal and bidirectional layers alike;
- ``model.set_attn_implementation("bellm")`` switches the model to it;
- ``from_layer`` is expressed through each attention module's own ``is_causal`` flag, read per call.
  ``config.is_causal`` and the ``is_causal`` forward kwarg are model-wide and would override the per-layer
  flags, so a patched model refuses them (ValueError);
- the setting is recorded in ``model.config.bellm = {"from_layer": k, "billm_compat": bool}``, so
  ``save_pretrained`` persists it and :func:`load` re-applies it (no ``trust_remote_code``). The saved config
  also names ``attn_implementation: "bellm"``: plain ``AutoModel.from_pretrained`` of a saved patched model
  then fails without bellm imported (transformers does not know the implementation), and with bellm imported
  its first forward raises until :func:`load` re-applies the setting, so a saved BeLLM model can never run
  as a silently causal model.

Isolation: the first :func:`patch` gives the model (and every submodule that shares its config object) a
private copy of the config, so a second model built on the same config object is never switched with it.
:func:`patched_setting` reads the setting a model's attention modules actually run (``bellm.Encoder`` checks
it before every encode and re-applies its own).

Inputs a patched model accepts (the inputs transformers' flash-attention path accepts):

- padded: ``input_ids (batch, seqlen)`` + ``attention_mask (batch, seqlen)`` (1 = real token; left, right
  or mixed padding). Padded keys are never attended; padded query rows give zeros in the attention output;
- packed: ``input_ids (1, total)``, ``position_ids (1, total)`` restarting at 0 for each sequence, and
  int32 ``cu_seq_lens_q/k (num_seqs + 1,)`` with ``max_length_q/k`` (see
  ``bellm.packing.PackedBatch.model_kwargs``); or ``position_ids`` alone at batch size 1 (a sequence starts
  wherever the position does not follow on by one, so a plain ``arange`` is one sequence). Sequences never
  see each other;
- unpadded: no mask (every token real).

Generation with a KV cache (query length != key length) runs a plain PyTorch path (causal layers see the
cache and themselves; bidirectional layers see the whole cache).
"""

from __future__ import annotations

import copy
import inspect
import numbers
import os
import types
from collections.abc import Callable

import torch

import bellm_kernels
from bellm_kernels._checks import tensor_version

__all__ = ["patch", "unpatch", "load", "patched_setting", "ATTN_IMPLEMENTATION"]

ATTN_IMPLEMENTATION = "bellm"
_CONFIG_KEY = "bellm"  # model.config.bellm = {"from_layer": k, "billm_compat": bool}
_STATE_ATTR = "_bellm_original"  # on the transformers model: what unpatch restores
_PADS_VISIBLE_ATTR = "_bellm_pads_visible"  # on bidirectional attention modules under billm_compat
_PATCHED_ATTR = "_bellm_patched"  # on every attention module patch() has set up; the forward refuses others
_SAVED_IMPL_KEY = "attn_implementation"  # config key: saved configs name the implementation (see docstring)
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SUPPORTED_DEVICES = ("cpu", "cuda")


# ---------------------------------------------------------------------------------------------------------
# The attention function and the mask function registered with transformers
# ---------------------------------------------------------------------------------------------------------


def _check_sliding_window(module, sliding_window: int | None, longest: int) -> None:
    """The kernel has no sliding window: allow one only when it cuts nothing off (``longest <= window``)."""
    if sliding_window is not None and longest > sliding_window:
        raise NotImplementedError(
            f"layer {getattr(module, 'layer_idx', '?')} ({type(module).__name__}) uses sliding-window "
            f"attention (sliding_window = {sliding_window}) and this input has sequences of up to {longest} "
            "tokens; bellm's attention kernel has no sliding window. Use sequences of at most "
            f"{sliding_window} tokens, or bellm.unpatch(model)"
        )


def _packing_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """``(cu_seqlens int32, max_seqlen)`` when the one row of ``position_ids (1, T)`` holds several sequences.

    A sequence starts wherever the position does not follow on from the previous one by exactly 1 (the rule
    of transformers' ``find_packed_sequence_indices``), so a plain ``arange`` at any offset is one sequence
    and gives ``None``. The result is remembered on the tensor (keyed by its version): every layer of one
    forward pass reuses it, so the host synchronisation happens once per forward pass.
    """
    cached = getattr(position_ids, "_bellm_packing", None)
    if cached is not None and cached[0] == tensor_version(position_ids):
        return cached[1]
    row = position_ids[0]
    starts = torch.nonzero(row[1:] - row[:-1] != 1).flatten() + 1
    result = None
    if starts.numel() > 0:
        bounds = torch.cat([starts.new_zeros(1), starts, starts.new_full((1,), row.numel())])
        result = (bounds.to(torch.int32), int((bounds[1:] - bounds[:-1]).max()))
    position_ids._bellm_packing = (tensor_version(position_ids), result)
    return result


def _cached_attention(module, q, k, v, attention_mask, causal: bool, scale: float) -> torch.Tensor:
    """Query length != key length (a KV cache in generation): plain PyTorch attention.

    ``q (B, Sq, H, D)``, ``k, v (B, Sk, Hkv, D)``; the queries are the last ``Sq`` positions. In a causal
    layer query ``i`` sees keys ``<= Sk - Sq + i``; in a bidirectional layer every query sees every key.
    Padded keys (``attention_mask (B, Sk)``) are hidden. Returns ``(B, Sq, H, D)``.
    """
    batch, sq, heads, _ = q.shape
    sk = k.shape[1]
    group = heads // k.shape[2]
    allowed = torch.ones(batch, 1, sq, sk, dtype=torch.bool, device=q.device)
    if attention_mask is not None:
        if attention_mask.shape[-1] != sk:
            raise ValueError(
                f"layer {module.layer_idx}: the padding mask covers {attention_mask.shape[-1]} keys but the "
                f"cache holds {sk}; a bellm-patched model supports transformers' dynamic cache only"
            )
        allowed = allowed & attention_mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.repeat_interleave(group, dim=2).transpose(1, 2),
        v.repeat_interleave(group, dim=2).transpose(1, 2),
        attn_mask=allowed,
        scale=scale,
    )
    return out.transpose(1, 2).nan_to_num(0.0)


def _refuse_unsupported(module: torch.nn.Module, attention_mask, dropout: float, kwargs: dict) -> None:
    """The checks of :func:`bellm_attention_forward` that do not depend on the input layout: ValueError for an
    ``is_causal`` kwarg or a mask that is not 2D, NotImplementedError for softcapping and attention dropout."""
    layer = getattr(module, "layer_idx", "?")
    if not module.__dict__.get(_PATCHED_ATTR):
        raise ValueError(
            f"layer {layer} ({type(module).__name__}) runs bellm's attention but was not patched by bellm, "
            "so its bidirectional layers would silently run causal (a model saved from a bellm-patched model "
            "and loaded with plain from_pretrained?); load it with bellm.load(path) or bellm.load(model), or "
            "bellm.Encoder.from_pretrained(path)"
        )
    if kwargs.get("is_causal") is not None:
        raise ValueError(
            f"got is_causal={kwargs['is_causal']!r} (a forward kwarg or config.is_causal): it is model-wide "
            "and would override bellm's per-layer setting; remove it and choose the bidirectional layers "
            "with bellm.patch(model, from_layer=k)"
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError(
            f"layer {layer} ({type(module).__name__}) uses attention logit softcapping (softcap = "
            f"{kwargs['softcap']}); bellm's attention kernel does not support it"
        )
    if dropout:
        raise NotImplementedError(
            f"layer {layer}: attention dropout {dropout} in training mode is not supported by bellm's kernel;"
            " set the attention modules' attention_dropout (config.attention_dropout) to 0.0 before training"
        )
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"got a {attention_mask.dim()}D attention mask of shape {tuple(attention_mask.shape)}; a "
            "bellm-patched model takes a 2D (batch, seqlen) padding mask (1 = real token) or packed inputs"
        )


def bellm_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function ``(module, query, key, value, attention_mask, **kw) -> (out, None)``.

    ``query (batch, heads, q_len, head_dim)``, ``key``/``value (batch, kv_heads, kv_len, head_dim)`` (GQA is
    passed to the kernel as is, no ``repeat_kv``); ``attention_mask``: the 2D bool padding mask
    ``(batch, kv_len)`` from :func:`bellm_mask`, or ``None``. Returns ``out (batch, q_len, heads, head_dim)``
    and no attention weights. Causal or bidirectional is ``module.is_causal``, set per layer by :func:`patch`.
    Packed inputs come as ``cu_seq_lens_q/k`` + ``max_length_q/k`` kwargs, or are inferred from
    ``position_ids`` at batch size 1.

    Raises ValueError for an ``is_causal`` kwarg (model-wide: it would override the per-layer flags), packed
    kwargs with batch > 1, a padding mask or a cache, and a 4D mask; NotImplementedError for attention
    softcapping, a sliding window shorter than a sequence, and attention dropout in training mode.
    """
    _refuse_unsupported(module, attention_mask, dropout, kwargs)
    causal = bool(getattr(module, "is_causal", True))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, S, H, D)
    batch, q_len = q.shape[:2]
    kv_len = k.shape[1]
    window = kwargs.get("sliding_window")

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None or cu_k is not None:
        if cu_q is None or cu_k is None or (cu_q is not cu_k and not torch.equal(cu_q, cu_k)):
            raise ValueError("cu_seq_lens_q and cu_seq_lens_k must both be given and equal (self-attention)")
        if batch != 1 or attention_mask is not None or q_len != kv_len:
            raise ValueError(
                "packed inputs (cu_seq_lens_q/k) need input_ids of shape (1, total_tokens), no padding and "
                f"no cache; got batch size {batch}, {q_len} queries, {kv_len} keys, attention_mask "
                f"{'with padding' if attention_mask is not None else 'None'}"
            )
        max_len = kwargs.get("max_length_k", kwargs.get("max_length_q"))
        max_len = int(max_len) if max_len is not None else int((cu_q[1:] - cu_q[:-1]).max())
        _check_sliding_window(module, window, max_len)
        out = bellm_kernels.attention(
            q[0], k[0], v[0], causal=causal, cu_seqlens=cu_q, max_seqlen=max_len, scale=scale
        )
        return out.unsqueeze(0), None

    if q_len != kv_len:  # generation with a KV cache
        _check_sliding_window(module, window, kv_len)
        return _cached_attention(module, q, k, v, attention_mask, causal, scale), None

    if attention_mask is not None:
        _check_sliding_window(module, window, kv_len)
        if not causal and getattr(module, _PADS_VISIBLE_ATTR, False):
            attention_mask = None  # billm_compat: the released BeLLM condition, pads visible to this layer
        out = bellm_kernels.attention(q, k, v, causal=causal, attention_mask=attention_mask, scale=scale)
        return out, None

    position_ids = kwargs.get("position_ids")
    if batch == 1 and isinstance(position_ids, torch.Tensor) and tuple(position_ids.shape) == (1, q_len):
        packing = _packing_from_position_ids(position_ids)
        if packing is not None:
            cu_seqlens, max_len = packing
            _check_sliding_window(module, window, max_len)
            out = bellm_kernels.attention(
                q[0],
                k[0],
                v[0],
                causal=causal,
                cu_seqlens=cu_seqlens.to(q.device),
                max_seqlen=max_len,
                scale=scale,
            )
            return out.unsqueeze(0), None
    _check_sliding_window(module, window, kv_len)
    return bellm_kernels.attention(q, k, v, causal=causal, scale=scale), None


def bellm_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """transformers mask function: the 2D bool padding mask ``(batch, kv_length)``, or ``None`` if no pads.

    Causality is not encoded here (each layer's attention module decides it), nor sliding windows or packing
    (the attention function handles packing and refuses a window it cannot honour): ``mask_function`` is
    unused, as in transformers' ``flash_attention_mask``.
    """
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:].bool()
    if torch.compiler.is_compiling():  # no data-dependent shortcut inside a traced graph (a graph break)
        return attention_mask
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, bellm_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, bellm_mask)


_register()


# ---------------------------------------------------------------------------------------------------------
# Finding the transformers model and its attention modules
# ---------------------------------------------------------------------------------------------------------


def _transformers_model(model):
    """The ``transformers.PreTrainedModel`` inside ``model``: itself, or a peft model's base model."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
        if isinstance(base, PreTrainedModel):
            return base
    raise TypeError(
        "bellm needs a transformers PreTrainedModel (e.g. LlamaModel, LlamaForCausalLM) or a peft model "
        f"wrapping one; got {type(model).__name__}"
    )


def _attention_modules(hf_model) -> list[torch.nn.Module]:
    """The self-attention module of each decoder layer, in layer order.

    NotImplementedError when there is not exactly one per layer, or when the model's attention does not go
    through transformers' ``ALL_ATTENTION_FUNCTIONS`` (e.g. custom remote code).
    """
    name = type(hf_model).__name__
    if not hf_model._can_set_attn_implementation():
        raise NotImplementedError(
            f"{name} does not route its attention through transformers' AttentionInterface "
            "(ALL_ATTENTION_FUNCTIONS; e.g. custom remote code), so bellm cannot patch it"
        )
    num_layers = getattr(hf_model.config.get_text_config(), "num_hidden_layers", None)
    found = [
        m
        for m in hf_model.modules()
        if "Attention" in type(m).__name__
        and hasattr(m, "is_causal")
        and isinstance(getattr(m, "layer_idx", None), int)
    ]
    found.sort(key=lambda m: m.layer_idx)
    if not found or [m.layer_idx for m in found] != list(range(num_layers or 0)):
        raise NotImplementedError(
            f"cannot find one self-attention module (with `is_causal` and `layer_idx`) per decoder layer in "
            f"{name} (found {len(found)}, config.num_hidden_layers = {num_layers}); bellm supports "
            "decoder-only models built like transformers' Llama, Mistral, Qwen2/3, Gemma2/3 and Phi3"
        )
    for m in found:
        try:
            source = inspect.getsource(inspect.unwrap(type(m).forward))
        except (OSError, TypeError):
            source = ""
        if "ALL_ATTENTION_FUNCTIONS" not in source:
            raise NotImplementedError(
                f"{type(m).__name__} (layer {m.layer_idx}) does not dispatch through transformers' "
                "ALL_ATTENTION_FUNCTIONS, so bellm cannot patch it"
            )
    return found


def _is_builtin(impl: str | None) -> bool:
    if impl is None:
        return True
    return impl in ("eager", "sdpa", "flex_attention") or impl.startswith(("flash_attention_", "paged|"))


def _check_dtype_device(hf_model) -> None:
    param = next(hf_model.parameters(), None)
    if param is None:
        return
    if param.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"the model's parameters are {param.dtype}; bellm's attention kernel supports float16, bfloat16 "
            "and float32 (convert with model.to(torch.bfloat16), for example)"
        )
    if param.device.type not in _SUPPORTED_DEVICES:
        raise ValueError(
            f"the model is on device {param.device}; bellm's attention kernel runs on cuda (Triton) or cpu "
            "(reference); move it with model.to('cuda') or model.to('cpu')"
        )


def _bellm_extra_repr(self: torch.nn.Module) -> str:
    """Bound to each attention module while patched, so ``print(model)`` shows the layer's mode."""
    base = type(self).extra_repr(self)
    mode = "causal" if self.is_causal else "bidirectional"
    return f"{base}, bellm={mode}" if base else f"bellm={mode}"


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def _checked_from_layer(hf_model, from_layer, n: int) -> int:
    """``from_layer`` normalised to ``0..n`` after every check :func:`patch` makes before touching the model
    (type and range of ``from_layer``, softcapping, ``config.is_causal``, dtype and device)."""
    if not isinstance(from_layer, numbers.Integral) or isinstance(from_layer, bool):
        raise TypeError(
            f"from_layer must be an int in [{-n}, {n}] for this {n}-layer model, got {from_layer!r} "
            f"({type(from_layer).__name__})"
        )
    from_layer = int(from_layer)  # numpy integers too
    if not -n <= from_layer <= n:
        raise ValueError(
            f"from_layer = {from_layer} is out of range for this {n}-layer model; valid are 0..{n} "
            f"(0 = all layers bidirectional, {n} = none) and {-n}..-1 (counting from the end)"
        )
    config = hf_model.config
    text_config = config.get_text_config()
    softcap = getattr(text_config, "attn_logit_softcapping", None)
    if softcap is not None:
        raise NotImplementedError(
            f"{type(hf_model).__name__} uses attention logit softcapping (attn_logit_softcapping = "
            f"{softcap}); bellm's attention kernel does not support it"
        )
    for cfg in (config, text_config):
        if getattr(cfg, "is_causal", None) is not None:
            raise ValueError(
                f"config.is_causal = {cfg.is_causal!r} is set: it is model-wide and would override bellm's "
                "per-layer setting; delete it (del model.config.is_causal) and use from_layer"
            )
    _check_dtype_device(hf_model)
    return from_layer + n if from_layer < 0 else from_layer


def patch(model, from_layer: int = -1, *, billm_compat: bool = False):
    """Make attention layers ``>= from_layer`` bidirectional and layers ``< from_layer`` causal, in place.

    Every layer's attention then runs :func:`bellm_kernels.attention` (Triton on CUDA, the PyTorch reference
    on CPU). Returns ``model``.

    Args:
        model: a transformers ``PreTrainedModel`` (a base model such as ``LlamaModel``, or a
            ``*ForCausalLM``), or a peft model wrapping one (patched through ``get_base_model()``). Patching a
            patched model again updates the setting; :func:`unpatch` restores the original. The first patch
            gives the model a private copy of its config (``model.config`` is then a new object), so other
            models built on the same config object are left as they were.
        from_layer: an int (numpy integers too) in ``0..num_layers``. ``num_layers`` makes nothing
            bidirectional (but still runs the kernel), ``0`` makes every layer bidirectional. Negative
            values count from the end: ``-1`` (the released BeLLM setting) makes only the last layer
            bidirectional.
        billm_compat: reproduce the training condition of the released BeLLM weights
            (``SeanLee97/bellm-*``): in the bidirectional layers the padded keys of a padded batch are
            *visible* (the released code passed an all-zero additive mask there), so results depend on the
            amount of padding. Causal layers are unchanged (pads hidden); packed inputs have no pads, so
            there it changes nothing. Default off: pads are never seen.

    Note: ``from_layer=-1`` with last-token pooling is a no-op (docs/bidirectional.md, section 1). The last real
    token's final hidden state equals the causal model's exactly: in a causal layer the last query already sees every
    key, and nothing after the last layer reads the other positions (whose states do change). Bidirectionality changes
    a last-token embedding only with a lower ``from_layer``, with mean pooling, or when padding leaks in
    (``billm_compat=True``).

    The setting is stored in ``model.config.bellm = {"from_layer": k, "billm_compat": bool}`` (``k``
    normalised to ``0..num_layers``) with ``config.attn_implementation = "bellm"``, persisted by
    ``save_pretrained`` and re-applied by :func:`load` (a plain ``from_pretrained`` of the saved folder
    refuses to run until then, see the module docstring).
    ``print(model)`` shows ``bellm=causal`` or ``bellm=bidirectional`` on each attention module.

    Raises:
        TypeError: ``from_layer`` not an int; not a transformers model; parameters in a dtype the kernel
            refuses (float64, ...).
        ValueError: ``from_layer`` out of range (the message gives this model's range); the model is on a
            custom (not built-in) attention implementation; on a device the kernel refuses;
            ``config.is_causal`` is set.
        NotImplementedError: the model's attention does not go through transformers'
            ``ALL_ATTENTION_FUNCTIONS``, or it uses attention logit softcapping (Gemma2). Sliding windows
            (Mistral, Gemma2/3, Qwen2) are checked per call: fine while no sequence is longer than the window.
    """
    hf_model = _transformers_model(model)
    modules = _attention_modules(hf_model)
    k = _checked_from_layer(hf_model, from_layer, len(modules))
    config = hf_model.config

    state = getattr(hf_model, _STATE_ATTR, None)
    if state is None:
        current = config._attn_implementation
        if current == ATTN_IMPLEMENTATION:  # loaded from a saved patched model: unpatch gives the default
            current = "sdpa" if getattr(hf_model, "_supports_sdpa", False) else "eager"
        elif not _is_builtin(current):
            raise ValueError(
                f"the model uses the custom attention implementation {current!r}; bellm replaces the "
                "attention function, so switch back first (model.set_attn_implementation('sdpa'))"
            )
        state = {
            "attn_implementation": current,
            "is_causal": [m.is_causal for m in modules],
            "extra_repr": [m.__dict__.get("extra_repr") for m in modules],
            "config": (_CONFIG_KEY in config.__dict__, config.__dict__.get(_CONFIG_KEY)),
            "modules": modules,  # for patched_setting: no module search per call
        }
        config = _own_config(model, hf_model)
    if config._attn_implementation != ATTN_IMPLEMENTATION:  # first patch, or switched away since
        hf_model.set_attn_implementation(ATTN_IMPLEMENTATION)
        if config._attn_implementation != ATTN_IMPLEMENTATION:
            raise NotImplementedError(
                f"{type(hf_model).__name__} refused set_attn_implementation({ATTN_IMPLEMENTATION!r}) (it "
                f"stayed on {config._attn_implementation!r}); bellm cannot patch it"
            )
    if getattr(hf_model, _STATE_ATTR, None) is None:
        setattr(hf_model, _STATE_ATTR, state)
        for m in modules:
            m.extra_repr = types.MethodType(_bellm_extra_repr, m)  # deepcopy rebinds it to the copy

    for m in modules:
        m.is_causal = m.layer_idx < k
        if billm_compat and not m.is_causal:
            setattr(m, _PADS_VISIBLE_ATTR, True)
        else:
            m.__dict__.pop(_PADS_VISIBLE_ATTR, None)
        setattr(m, _PATCHED_ATTR, True)
    setattr(config, _CONFIG_KEY, {"from_layer": k, "billm_compat": bool(billm_compat)})
    setattr(config, _SAVED_IMPL_KEY, ATTN_IMPLEMENTATION)
    return model


def _own_config(model, hf_model):
    """Give ``hf_model`` a private deep copy of its config and return it.

    Every submodule of ``model`` (the peft wrapper, if any) and ``hf_model`` that holds the old config object,
    or one of its sub-configs, is pointed at the copy, so patching never switches another model that was built
    on the same config object (transformers' attention and mask dispatch read ``config._attn_implementation``).
    """
    from transformers import PretrainedConfig

    memo: dict = {}
    copied = copy.deepcopy(hf_model.config, memo)
    roots = [hf_model] + ([model] if isinstance(model, torch.nn.Module) and model is not hf_model else [])
    for root in roots:
        for module in root.modules():
            held = module.__dict__.get("config")
            if isinstance(held, PretrainedConfig) and id(held) in memo:
                module.__dict__["config"] = memo[id(held)]
    return copied


def patched_setting(model) -> dict | None:
    """The setting ``{"from_layer": k, "billm_compat": bool}`` that the model's attention modules run now.

    ``None`` when the model is not patched, was switched to another attention implementation since, or its
    per-layer flags no longer form one ``from_layer`` setting. Reads the flags themselves, not
    ``config.bellm``, and costs one pass over the layers (no module search), so it can run before every call.
    """
    hf_model = _transformers_model(model)
    state = getattr(hf_model, _STATE_ATTR, None)
    if state is None or hf_model.config._attn_implementation != ATTN_IMPLEMENTATION:
        return None
    modules = state["modules"]
    flags = [bool(m.is_causal) for m in modules]
    k = flags.index(False) if False in flags else len(flags)
    if any(flags[k:]) or not all(m.__dict__.get(_PATCHED_ATTR) for m in modules):
        return None
    visible = [bool(m.__dict__.get(_PADS_VISIBLE_ATTR)) for m in modules[k:]]
    if any(visible) and not all(visible):
        return None
    if not visible:  # no bidirectional layer: billm_compat changes nothing, report what was asked for
        recorded = getattr(hf_model.config, _CONFIG_KEY, None) or {}
        return {"from_layer": k, "billm_compat": bool(recorded.get("billm_compat", False))}
    return {"from_layer": k, "billm_compat": all(visible)}


def unpatch(model):
    """Undo :func:`patch` in place and return ``model``.

    Restores the attention implementation, every module's ``is_causal`` and ``extra_repr``, and
    ``config.bellm`` as they were before the first patch (removed if it was absent); the config stays the
    private copy the first patch made. ValueError when ``model`` is not patched.
    """
    hf_model = _transformers_model(model)
    state = getattr(hf_model, _STATE_ATTR, None)
    if state is None:
        raise ValueError(f"this {type(hf_model).__name__} is not patched by bellm; nothing to unpatch")
    modules = _attention_modules(hf_model)
    hf_model.set_attn_implementation(state["attn_implementation"])
    for m, flag, repr_fn in zip(modules, state["is_causal"], state["extra_repr"]):
        m.is_causal = flag
        m.__dict__.pop(_PADS_VISIBLE_ATTR, None)
        m.__dict__.pop(_PATCHED_ATTR, None)
        m.__dict__.pop("extra_repr", None)
        if repr_fn is not None:
            m.extra_repr = repr_fn
    hf_model.config.__dict__.pop(_CONFIG_KEY, None)
    hf_model.config.__dict__.pop(_SAVED_IMPL_KEY, None)
    had_setting, setting = state["config"]
    if had_setting:
        setattr(hf_model.config, _CONFIG_KEY, setting)
    delattr(hf_model, _STATE_ATTR)
    return model


def load(path_or_model, *, causal_lm: bool = False, **from_pretrained_kwargs):
    """Re-apply a saved bellm setting and return the patched model.

    ``path_or_model`` is either a model (transformers or peft) whose ``config.bellm`` holds
    ``{"from_layer": k, "billm_compat": bool}`` (written by :func:`patch`, persisted by
    ``save_pretrained``), or a local directory saved with ``save_pretrained``, loaded offline with
    ``AutoModel`` (``AutoModelForCausalLM`` with ``causal_lm``) and ``from_pretrained_kwargs``;
    ``trust_remote_code`` stays off unless you pass it.

    Raises FileNotFoundError for a missing directory, ValueError when the config holds no bellm setting.
    """
    if isinstance(path_or_model, (str, os.PathLike)):
        from transformers import AutoModel, AutoModelForCausalLM

        path = os.fspath(path_or_model)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path!r} is not a directory saved with save_pretrained")
        from_pretrained_kwargs.setdefault("local_files_only", True)
        auto = AutoModelForCausalLM if causal_lm else AutoModel
        model = auto.from_pretrained(path, **from_pretrained_kwargs)
    else:
        model = path_or_model
    hf_model = _transformers_model(model)
    setting = getattr(hf_model.config, _CONFIG_KEY, None)
    if not isinstance(setting, dict) or not isinstance(setting.get("from_layer"), int):
        raise ValueError(
            f"the model's config holds no bellm setting (config.{_CONFIG_KEY} = {setting!r}); patch it "
            "with bellm.patch(model, from_layer=k) instead"
        )
    billm_compat = bool(setting.get("billm_compat", False))
    return patch(model, from_layer=setting["from_layer"], billm_compat=billm_compat)
