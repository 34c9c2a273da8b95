"""BeLLM's turning point: the per-layer STS curve, the ``from_layer`` sweep, ``bellm turning-point``.

**Per-layer curve** (:func:`find_turning_point`). The sentences are run through the *unpatched* model once, in
right-padded, length-sorted batches with ``output_hidden_states=True``; every layer's hidden states are pooled
in that same pass (``bellm_kernels.pool``) and scored with the STS protocol of :mod:`bellm.evaluate` (Spearman
x 100 of cosine similarity against gold scores). ``scores[i]`` belongs to ``hidden_states[i]``: ``i = 0`` is
the embedding output, ``i = l`` the output of decoder layer ``l - 1``, ``i = L`` (``L = num_hidden_layers``)
the last layer's.

**Like with like** (docs/bidirectional.md, section 2): transformers' last hidden state is after the model's final norm
while the others are not. With ``layer_norm="final"`` (default) the final norm module is applied to *every* layer's
hidden states before pooling, so each point is "what the embedding would be if the model stopped after that layer";
the last point then equals the causal model's ordinary embedding. With ``layer_norm="none"`` no layer is normed: the
last layer's state is taken *before* the final norm (captured with a forward hook on the norm), so again all points
are alike.

**Undefined points** (docs/bidirectional.md, section 3): a layer whose cosines are all equal (layer 0's last token
under the BeLLM prompt is always the closing ``"``, so every sentence gets the same vector) has no Spearman: ``nan``
here, ``null`` in JSON, "undefined" in print and a gap in the plot. It never crashes and is never chosen as the
turning point.

**Turning point** (:func:`pick_turning_point`): smooth the defined scores with a centred moving average over
``smooth`` layers (default 1 = no smoothing; windows clipped at the ends, undefined layers skipped); the
turning point ``t`` is the layer with the maximum smoothed score, the *earliest* such layer on ties. The curve
"drops after ``t``" by ``drop = smoothed[t] - smoothed[L]`` (0 when ``t = L``: no turning point inside the
stack, the last layer is best). The suggested ``from_layer`` is ``t``: decoder layers ``t .. L-1`` (those
after the peak) become bidirectional, and ``from_layer = L`` means none. With last-token pooling,
``from_layer = L - 1`` gives exactly the causal embedding (docs/bidirectional.md, section 1), so ``t >= L - 1``
means "bidirectionality cannot change this model's last-token embedding, trained or not"; the result says so in
``same_as_causal``.

**Sweep** (:func:`sweep_from_layer`): for each candidate ``k``, patch the model with ``from_layer=k``, encode
the same pairs with :class:`bellm.encoder.Encoder` and score the final embedding; one model, re-patched per
``k``, unpatched afterwards. ``k = L`` is the causal model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bellm.common import BELLM_PROMPT, LAYER_NORMS, format_score, normalize_whitespace, resolve_prompt
from bellm.evaluate import spearman_cosine, to_jsonable
from bellm.sts_data import STSPairs, load_sts

__all__ = [
    "BELLM_PROMPT",
    "TurningPoint",
    "layer_embeddings",
    "find_turning_point",
    "pick_turning_point",
    "sweep_from_layer",
    "plot_curve",
]

_NORM_DOC = {
    "final": "the model's final norm applied to every layer's hidden states "
    "(hidden_states[-1] already has it)",
    "none": "no norm on any layer (the last layer's state is taken before the final norm)",
}


@dataclass
class TurningPoint:
    """The per-layer curve and its turning point (see the module doc for every definition).

    ``scores``: ``num_layers + 1`` Spearman x 100 values (``nan`` = undefined); ``smoothed``: the same after
    the moving average; ``turning_point``: the chosen layer index ``t`` (``None`` if no score is defined);
    ``suggested_from_layer``: ``t``; ``drop``: ``smoothed[t] - smoothed[L]``; ``sweep``: ``{k: score}`` when a
    sweep ran; ``info``: prompt, pooling, norm treatment, data description.
    """

    scores: list[float]
    smoothed: list[float]
    turning_point: int | None
    num_layers: int
    drop: float
    smooth: int
    info: dict = field(default_factory=dict)
    sweep: dict[int, float] = field(default_factory=dict)

    @property
    def suggested_from_layer(self) -> int | None:
        return self.turning_point

    @property
    def same_as_causal(self) -> bool | None:
        """True when patching from the suggested layer cannot change a last-token embedding
        (docs/bidirectional.md, section 1)."""
        if self.turning_point is None:
            return None
        return self.info.get("pooling") == "last" and self.turning_point >= self.num_layers - 1

    def to_dict(self) -> dict:
        """JSON-ready dict (undefined scores are ``None``)."""
        return to_jsonable(
            {
                "scores": self.scores,
                "smoothed": self.smoothed,
                "turning_point": self.turning_point,
                "suggested_from_layer": self.suggested_from_layer,
                "same_as_causal": self.same_as_causal,
                "drop_after_turning_point": self.drop,
                "num_layers": self.num_layers,
                "smooth_window": self.smooth,
                "definition": (
                    "scores[i] = Spearman x 100 of cosine similarity (gold vs pooled hidden_states[i]); "
                    "turning point = earliest layer with the maximum smoothed score (centred moving average, "
                    "undefined layers skipped); drop = smoothed[t] - smoothed[num_layers]; "
                    "suggested from_layer = t (layers t..L-1 bidirectional)"
                ),
                **self.info,
                "sweep": {str(k): v for k, v in self.sweep.items()},
            }
        )

    def save(self, output_dir: str | os.PathLike, name: str = "turning_point") -> tuple[Path, Path]:
        """Write ``<name>.json`` and ``<name>.png`` (the curve, and the sweep when present) atomically."""
        from bellm._io import atomic_write_json

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out / f"{name}.json", out / f"{name}.png"
        atomic_write_json(json_path, self.to_dict())
        plot_curve(self, png_path)
        return json_path, png_path

    def format(self) -> str:
        """A plain-text table of the curve (and sweep), undefined points written as "undefined"."""
        lines = ["layer  score  " + ("sweep(from_layer=k)" if self.sweep else "")]
        for i, s in enumerate(self.scores):
            mark = "  <- turning point" if i == self.turning_point else ""
            sw = f"  {format_score(self.sweep[i])}" if i in self.sweep else ""
            lines.append(f"{i:5d}  {format_score(s):>9}{sw}{mark}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Data and tokenization
# ----------------------------------------------------------------------------------------------------


def _as_pairs(data, max_pairs: int | None, seed: int, data_dir, source: str) -> STSPairs:
    """``data``: ``None`` (STS-B dev), an :class:`STSPairs`, or ``(sentences1, sentences2, scores)``."""
    if data is None:
        pairs = load_sts("STSBenchmark", "dev", source=source, data_dir=data_dir)
    elif isinstance(data, STSPairs):
        pairs = data
    else:
        try:
            s1, s2, gold = data
        except (TypeError, ValueError) as err:
            raise TypeError(
                "data must be None, an STSPairs or a (sentences1, sentences2, scores) tuple"
            ) from err
        pairs = STSPairs("custom", "-", list(s1), list(s2), np.asarray(gold, dtype=np.float64))
        if not (len(pairs.sentences1) == len(pairs.sentences2) == len(pairs.scores)):
            raise ValueError(
                f"data has {len(pairs.sentences1)} / {len(pairs.sentences2)} sentences "
                f"and {len(pairs.scores)} scores"
            )
    pairs = pairs.sample(max_pairs, seed)
    if len(pairs) < 2:
        raise ValueError(
            f"need at least 2 sentence pairs to compute a Spearman correlation, got {len(pairs)}"
        )
    return pairs


@contextlib.contextmanager
def _causal(model):
    """Run the block on the unpatched (causal) model; a bellm patch present before is re-applied
    afterwards."""
    try:
        from bellm.surgery import patch, unpatch
    except ImportError:  # pragma: no cover - bellm.surgery ships with bellm
        yield
        return
    setting = dict(getattr(getattr(model, "config", None), "bellm", None) or {})
    try:
        unpatch(model)
        was_patched = True
    except (ValueError, TypeError):
        was_patched = False
    try:
        yield
    finally:
        if was_patched:
            patch(model, from_layer=setting["from_layer"], billm_compat=setting.get("billm_compat", False))


def _final_norm(model) -> torch.nn.Module | None:
    base = getattr(model, "base_model", model)
    for owner in (base, getattr(base, "model", None), model):
        norm = getattr(owner, "norm", None) if owner is not None else None
        if isinstance(norm, torch.nn.Module):
            return norm
    return None


# ----------------------------------------------------------------------------------------------------
# The one pass
# ----------------------------------------------------------------------------------------------------


def _right_padded(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(n, longest)`` long tensors, right-padded with ``pad_id``."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return input_ids, mask


def _pooled_layers(
    model, norm, captured: list, input_ids: torch.Tensor, mask: torch.Tensor, layer_norm: str, pooling: str
) -> torch.Tensor:
    """Every layer's pooled embedding of one right-padded batch: ``(num_layers + 1, n, dim)`` float32, CPU.

    ``captured`` is filled by a forward hook on ``norm`` with its input (the last layer's state before the
    final norm); explicit ``position_ids`` make each row what the sentence gives alone. TypeError for a model
    that returns no hidden states.
    """
    import bellm_kernels

    n, width = input_ids.shape
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=torch.arange(width, device=input_ids.device).expand(n, width),
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = getattr(out, "hidden_states", None)
    if hidden is None or not captured:
        raise TypeError(
            f"{type(model).__name__} returned no hidden_states with output_hidden_states=True; "
            "pass a transformers decoder model (e.g. LlamaModel / LlamaForCausalLM)"
        )
    stacked = torch.stack([*hidden[:-1], captured[-1]])  # (L+1, B, T, D), every layer before the final norm
    if layer_norm == "final":
        stacked = norm(stacked)
    layers, b, t, d = stacked.shape
    pooled = bellm_kernels.pool(
        stacked.reshape(layers * b, t, d), mode=pooling, attention_mask=mask.repeat(layers, 1)
    )
    return pooled.reshape(layers, b, d).float().cpu()


@torch.inference_mode()
def layer_embeddings(
    model,
    tokenizer,
    sentences: Sequence[str],
    *,
    prompt: str | None = None,
    pooling: str = "last",
    layer_norm: str = "final",
    batch_size: int = 16,
    max_length: int | None = None,
    show_progress_bar: bool = True,
    desc: str = "layers",
) -> torch.Tensor:
    """Pooled embeddings of every layer in one forward pass per batch: ``(num_layers + 1, n, dim)`` float32,
    CPU.

    Row ``i`` of the result is ``pool(hidden_states[i])`` for ``sentences`` in input order, with the norm
    treatment ``layer_norm`` (module doc). Batches are sorted by length and right-padded, with explicit
    ``position_ids``, so a causal model gives each sentence exactly what it gives it alone. ``prompt`` must
    contain ``{text}`` (``None``: no prompt). Raises ValueError on empty input or a bad prompt, TypeError for
    a model without hidden states.
    """
    from tqdm.auto import tqdm

    if layer_norm not in LAYER_NORMS:
        raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {layer_norm!r}")
    template = resolve_prompt(prompt, pooling)
    sentences = list(sentences)
    if not sentences:
        raise ValueError("no sentences to encode (empty dataset)")
    norm = _final_norm(model)
    if norm is None:
        raise TypeError(
            f"{type(model).__name__} has no final norm module (.norm); the per-layer curve needs a decoder "
            "model "
            "whose hidden states can all be given the same norm treatment"
        )
    texts = [template.replace("{text}", normalize_whitespace(s)) for s in sentences]
    kw = {"truncation": True, "max_length": max_length} if max_length else {}
    ids = tokenizer(texts, add_special_tokens=True, **kw)["input_ids"]
    if any(len(x) == 0 for x in ids):
        raise ValueError("a sentence tokenized to zero tokens; check the tokenizer and prompt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(model.parameters()).device

    captured: list[torch.Tensor] = []  # the final norm's input: the last layer's state before the norm
    hook = norm.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    result = None
    try:
        with tqdm(total=len(ids), desc=desc, unit="sent", disable=not show_progress_bar) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                input_ids, mask = _right_padded([ids[i] for i in idx], pad_id)
                captured.clear()
                pooled = _pooled_layers(
                    model, norm, captured, input_ids.to(device), mask.to(device), layer_norm, pooling
                )
                if result is None:
                    result = torch.empty(pooled.shape[0], len(ids), pooled.shape[2], dtype=torch.float32)
                result[:, idx] = pooled
                bar.update(len(idx))
    finally:
        hook.remove()
    return result


def pick_turning_point(scores: Sequence[float], smooth: int = 1) -> tuple[int | None, list[float], float]:
    """``(t, smoothed, drop)`` for a per-layer curve; see the module doc. ``t`` is ``None`` if nothing is
    defined."""
    if smooth < 1:
        raise ValueError(f"smooth must be >= 1 layer, got {smooth}")
    s = np.asarray(scores, dtype=np.float64)
    defined = np.isfinite(s)
    half = smooth // 2
    smoothed = np.full_like(s, np.nan)
    for i in np.flatnonzero(defined):
        window = s[max(0, i - half) : i + half + 1]
        smoothed[i] = window[np.isfinite(window)].mean()
    if not defined.any():
        return None, smoothed.tolist(), float("nan")
    t = int(np.flatnonzero(smoothed == np.nanmax(smoothed))[0])
    last = smoothed[-1] if np.isfinite(smoothed[-1]) else smoothed[np.flatnonzero(defined)[-1]]
    return t, smoothed.tolist(), float(smoothed[t] - last)


def find_turning_point(
    model,
    tokenizer,
    data=None,
    prompt: str | None = None,
    pooling: str = "last",
    *,
    layer_norm: str = "final",
    smooth: int = 1,
    max_pairs: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    source: str = "senteval",
    batch_size: int = 16,
    max_length: int | None = None,
    output_dir: str | os.PathLike | None = None,
    show_progress_bar: bool = True,
) -> TurningPoint:
    """Score every layer of ``model`` on STS pairs in one pass and pick the turning point (module doc).

    ``data``: ``None`` = STS-B dev (``source`` text, optionally a seeded sample of ``max_pairs``), an
    :class:`~bellm.sts_data.STSPairs` or ``(sentences1, sentences2, scores)``. ``model`` must be unpatched for
    the curve to describe the causal model. With ``output_dir``, ``turning_point.json`` and ``.png`` are
    written there.
    """
    pairs = _as_pairs(data, max_pairs, seed, data_dir, source)
    unique = list(dict.fromkeys(pairs.sentences1 + pairs.sentences2))
    index = {s: i for i, s in enumerate(unique)}
    with _causal(model):
        emb = layer_embeddings(
            model,
            tokenizer,
            unique,
            prompt=prompt,
            pooling=pooling,
            layer_norm=layer_norm,
            batch_size=batch_size,
            max_length=max_length,
            show_progress_bar=show_progress_bar,
            desc="turning point: all layers",
        ).numpy()
    i1 = [index[s] for s in pairs.sentences1]
    i2 = [index[s] for s in pairs.sentences2]
    scores = [spearman_cosine(layer[i1], layer[i2], pairs.scores) for layer in emb]
    t, smoothed, drop = pick_turning_point(scores, smooth)
    info = {
        "prompt": resolve_prompt(prompt, pooling),
        "pooling": pooling,
        "layer_norm": layer_norm,
        "layer_norm_meaning": _NORM_DOC[layer_norm],
        "data": {
            "task": pairs.task,
            "split": pairs.split,
            "pairs": len(pairs),
            "source": source,
            "max_pairs": max_pairs,
            "seed": seed,
        },
    }
    result = TurningPoint(scores, smoothed, t, emb.shape[0] - 1, drop, smooth, info)
    if output_dir is not None:
        result.save(output_dir)
    return result


# ----------------------------------------------------------------------------------------------------
# The from_layer sweep (needs bellm.patch and bellm.encoder)
# ----------------------------------------------------------------------------------------------------


def _candidates(num_layers: int, from_layers: Sequence[int] | None, stride: int | None) -> list[int]:
    if from_layers is not None and stride is not None:
        raise ValueError("pass from_layers or stride, not both")
    if from_layers is None:
        step = stride or max(1, num_layers // 10)
        if step < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        ks = list(range(0, num_layers + 1, step))
        if ks[-1] != num_layers:
            ks.append(num_layers)
        return ks
    out = []
    for k in from_layers:
        kk = k + num_layers if k < 0 else k
        if not 0 <= kk <= num_layers:
            raise ValueError(f"from_layer {k} is outside 0..{num_layers} (or -{num_layers}..-1 from the end)")
        out.append(kk)
    return sorted(set(out))


def sweep_from_layer(
    model,
    tokenizer,
    data=None,
    from_layers: Sequence[int] | None = None,
    *,
    stride: int | None = None,
    prompt: str | None = None,
    pooling: str = "last",
    max_pairs: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    source: str = "senteval",
    batch_size: int | None = None,
    show_progress_bar: bool = True,
) -> dict[int, float]:
    """``{k: Spearman x 100}`` of the final embedding with attention layers ``>= k`` bidirectional (no
    training).

    Candidates: ``from_layers`` (negative counts from the end) or every ``stride``-th layer from 0, always
    ending at ``num_layers`` (= causal); default stride ``num_layers // 10``. One model, re-patched per ``k``
    through :class:`bellm.encoder.Encoder` (packed path); afterwards, also on error, the model's patch state
    is what it was before (unpatched, or its earlier patch). Data as in :func:`find_turning_point`.
    """
    from tqdm.auto import tqdm

    from bellm.encoder import Encoder

    pairs = _as_pairs(data, max_pairs, seed, data_dir, source)
    num_layers = int(model.config.num_hidden_layers)
    ks = _candidates(num_layers, from_layers, stride)
    unique = list(dict.fromkeys(normalize_whitespace(s) for s in pairs.sentences1 + pairs.sentences2))
    index = {s: i for i, s in enumerate(unique)}
    i1 = [index[normalize_whitespace(s)] for s in pairs.sentences1]
    i2 = [index[normalize_whitespace(s)] for s in pairs.sentences2]
    kwargs = {"show_progress_bar": False}
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    results: dict[int, float] = {}
    with _causal(model):  # restores the model's patch state (none, or the one it had) afterwards
        try:
            for k in tqdm(ks, desc="sweep from_layer", unit="k", disable=not show_progress_bar):
                encoder = Encoder(
                    model, tokenizer, from_layer=k, pooling=pooling, prompt=resolve_prompt(prompt, pooling)
                )
                emb = np.asarray(encoder.encode(unique, **kwargs), dtype=np.float64)
                results[k] = spearman_cosine(emb[i1], emb[i2], pairs.scores)
        finally:
            from bellm.surgery import unpatch

            try:
                unpatch(model)
            except ValueError:
                pass
    return results


# ----------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------


def plot_curve(result: TurningPoint, path: str | os.PathLike) -> None:
    """Save the per-layer curve (undefined layers as gaps, marked 'undefined'), the turning point, and the
    sweep."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from bellm._io import atomic_path

    x = np.arange(len(result.scores))
    y = np.asarray(result.scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(x, y, "o-", ms=3, label="per-layer (causal, one pass)")
    if result.smooth > 1:
        ax.plot(x, result.smoothed, "-", alpha=0.5, label=f"smoothed (window {result.smooth})")
    undefined = x[~np.isfinite(y)]
    if len(undefined):
        low = np.nanmin(y) if np.isfinite(y).any() else 0.0
        ax.plot(undefined, np.full(len(undefined), low), "x", color="gray", label="undefined (constant)")
    if result.sweep:
        ks = sorted(result.sweep)
        ax.plot(ks, [result.sweep[k] for k in ks], "s--", ms=4, label="patched from_layer=k, final layer")
    if result.turning_point is not None:
        ax.axvline(result.turning_point, color="red", ls=":", label=f"turning point {result.turning_point}")
    ax.set_xlabel("layer i (hidden_states[i]) / from_layer k")
    ax.set_ylabel("Spearman x 100")
    data = result.info.get("data", {})
    ax.set_title(
        f"{data.get('task', '')} {data.get('split', '')} ({data.get('pairs', '?')} pairs), "
        f"{result.info.get('pooling')} pooling, norm: {result.info.get('layer_norm')}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
