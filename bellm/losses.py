"""The AnglE training objective (as BeLLM trains with it), as three separately testable terms.

``loss = cosine_w * cosine_term + ibn_w * ibn_term + angle_w * angle_term``, following ``angle_emb``'s
``AngleLoss`` (format B, triplets: the ``(anchor, positive)`` pairs are labelled 1 and the
``(anchor, negative)`` pairs 0):

- :func:`cosine_term` — CoSENT: ``log(1 + sum_{label_i < label_j} exp(tau * (cos_i - cos_j)))`` over pairs.
- :func:`angle_term` — the same ranking objective on AnglE's angle similarity: the complex division of
  the pair's embeddings (first half = real, second half = imaginary part), normalised, summed over dimensions,
  absolute value. Equal to ``sentence_transformers.util.pairwise_angle_sim`` and to
  ``angle_emb.angle_loss(pooling_strategy="sum")``.
- :func:`ibn_term` — in-batch negatives with the hard negative: cross-entropy of the anchor against
  ``[positives; negatives]`` cosine scores times ``tau`` (``angle_emb.contrastive_with_negative_loss``).

The released BeLLM weights are ``cosine_w=0, ibn_w=20, angle_w=1`` with every tau 20 (the paper's stage 1), the
defaults of :class:`AnglELoss`.

Scored pairs (``text1, text2, score``, e.g. STS-B train) use the cosine and angle terms with the scores as
labels. Graded scores define no positives, so the in-batch-negative term is skipped for scored pairs
(``angle_emb``'s pair-format ``in_batch_negative_loss`` casts scores to int: meaningful for 0/1 only).
All similarities are computed in float32 whatever the embedding dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["AnglELoss", "angle_similarity", "angle_term", "cosine_term", "ibn_term", "ranking_loss"]


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CoSENT ranking loss ``log(1 + sum_{labels[i] < labels[j]} exp(scores[i] - scores[j]))``.

    ``scores``, ``labels``: ``(n,)``; ``scores`` already multiplied by the temperature. Pairs with equal
    labels do not contribute; with a single label value the loss is ``log(1) = 0``. Quadratic in ``n``
    (fine for the pair counts of one training batch).
    """
    if scores.shape != labels.shape or scores.dim() != 1:
        raise ValueError(
            f"scores and labels must both be (n,), got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    diff = scores[:, None] - scores[None, :]  # diff[i, j] = s_i - s_j
    lower = labels[:, None] < labels[None, :]
    diff = diff.masked_fill(~lower, float("-inf")).reshape(-1)
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)


def cosine_term(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, tau: float = 20.0) -> torch.Tensor:
    """CoSENT on the cosine similarity of ``(x[i], y[i])``; ``x``, ``y``: ``(n, d)``, ``labels``: ``(n,)``."""
    cos = F.cosine_similarity(x.float(), y.float(), dim=-1, eps=1e-12)
    return ranking_loss(cos * tau, labels.float())


def angle_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AnglE's similarity of ``(x[i], y[i])``: ``|sum(Re + Im)|`` of the normalised complex quotient.

    Returns ``(n,)``. ``x = a + bi``, ``y = c + di`` with ``a, b`` (``c, d``) the first and second half of the
    dimensions (an odd dimension is zero-padded). ``(a + bi) / (c + di) = ((ac + bd) + i(bc - ad)) / |y|^2``,
    scaled by ``|y| / |x|``.
    """
    x, y = x.float(), y.float()
    if x.shape[-1] % 2:
        x, y = F.pad(x, (0, 1)), F.pad(y, (0, 1))
    a, b = x.chunk(2, dim=-1)
    c, d = y.chunk(2, dim=-1)
    norm = torch.linalg.vector_norm(x, dim=-1) * torch.linalg.vector_norm(y, dim=-1)
    re = (a * c + b * d).sum(-1)
    im = (b * c - a * d).sum(-1)
    return ((re + im) / norm.clamp_min(1e-12)).abs()


def angle_term(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, tau: float = 20.0) -> torch.Tensor:
    """CoSENT ranking on :func:`angle_similarity`; ``x``, ``y``: ``(n, d)``, ``labels``: ``(n,)``."""
    return ranking_loss(angle_similarity(x, y) * tau, labels.float())


def ibn_term(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None = None, tau: float = 20.0
) -> torch.Tensor:
    """In-batch negatives: mean cross-entropy of ``tau * cos(anchor[i], [positive; negative])``, target ``i``.

    ``anchor``, ``positive``, ``negative``: ``(n, d)``. Every other positive and every negative in the batch
    is a negative for ``anchor[i]``; under DDP the caller passes the batch gathered from all ranks.
    """
    target = positive if negative is None else torch.cat([positive, negative], dim=0)
    q = F.normalize(anchor.float(), p=2, dim=-1)
    t = F.normalize(target.float(), p=2, dim=-1)
    logits = q @ t.T * tau  # (n, n or 2n)
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


class AnglELoss:
    """The weighted AnglE objective; call with triplets or scored pairs.

    ``loss(anchor, positive, negative)`` (triplets, each ``(n, d)``) or ``loss(text1, text2, scores=scores)``
    (``scores``: ``(n,)``, any monotone scale such as STS 0-5). Returns a scalar float32 tensor. Raises
    ValueError for negative weights, mismatched shapes, or both ``negative`` and ``scores``.
    """

    def __init__(self, cosine_w: float = 0.0, ibn_w: float = 20.0, angle_w: float = 1.0,
                 cosine_tau: float = 20.0, ibn_tau: float = 20.0, angle_tau: float = 20.0):
        for name, w in (("cosine_w", cosine_w), ("ibn_w", ibn_w), ("angle_w", angle_w)):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        self.cosine_w, self.ibn_w, self.angle_w = cosine_w, ibn_w, angle_w
        self.cosine_tau, self.ibn_tau, self.angle_tau = cosine_tau, ibn_tau, angle_tau

    def __repr__(self) -> str:
        return (f"AnglELoss(cosine_w={self.cosine_w}, ibn_w={self.ibn_w}, angle_w={self.angle_w}, "
                f"cosine_tau={self.cosine_tau}, ibn_tau={self.ibn_tau}, angle_tau={self.angle_tau})")

    def __call__(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None = None,
                 *, scores: torch.Tensor | None = None) -> torch.Tensor:
        if anchor.shape != positive.shape or (negative is not None and negative.shape != anchor.shape):
            raise ValueError(
                f"anchor/positive/negative must have one shape, got {tuple(anchor.shape)}, "
                f"{tuple(positive.shape)}, {None if negative is None else tuple(negative.shape)}"
            )
        if negative is not None and scores is not None:
            raise ValueError("pass either negative (triplets) or scores (scored pairs), not both")
        if negative is None and scores is None:
            raise ValueError("pass negative (triplets) or scores (scored pairs); AnglE needs one of them")
        if negative is not None:
            n = anchor.shape[0]
            x = torch.cat([anchor, anchor], dim=0)
            y = torch.cat([positive, negative], dim=0)
            labels = torch.cat([torch.ones(n), torch.zeros(n)]).to(anchor.device)
        else:
            if scores.shape != (anchor.shape[0],):
                raise ValueError(f"scores must be ({anchor.shape[0]},), got {tuple(scores.shape)}")
            x, y, labels = anchor, positive, scores.float()
        loss = anchor.new_zeros((), dtype=torch.float32)
        if self.cosine_w > 0:
            loss = loss + self.cosine_w * cosine_term(x, y, labels, self.cosine_tau)
        if self.ibn_w > 0 and negative is not None:
            loss = loss + self.ibn_w * ibn_term(anchor, positive, negative, self.ibn_tau)
        if self.angle_w > 0:
            loss = loss + self.angle_w * angle_term(x, y, labels, self.angle_tau)
        return loss
