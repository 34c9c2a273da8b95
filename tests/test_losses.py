"""AnglE loss terms vs hand-written formulas (explicit loops) and vs sentence-transformers' losses."""

import math

import pytest
import torch

from bellm import losses


def _emb(n=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3)]


def _cos(u, v):
    return float(u @ v / (u.norm() * v.norm()))


def _ranking_by_hand(sims, labels, tau):
    total = 1.0
    for i in range(len(sims)):
        for j in range(len(sims)):
            if labels[i] < labels[j]:
                total += math.exp(tau * (sims[i] - sims[j]))
    return math.log(total)


def _angle_by_hand(u, v):
    """|Re + Im| of (u / v) with complex numbers, normalised by |u| |v| / |v|^2 as AnglE does."""
    h = u.shape[0] // 2
    zu = [complex(float(u[k]), float(u[k + h])) for k in range(h)]
    zv = [complex(float(v[k]), float(v[k + h])) for k in range(h)]
    nu = math.sqrt(sum(abs(z) ** 2 for z in zu))
    nv = math.sqrt(sum(abs(z) ** 2 for z in zv))
    # per dimension: (zu * conj(zv)) / |zv|^2 then * nv / nu
    q = [zu[k] * zv[k].conjugate() / nv**2 * (nv / nu) for k in range(h)]
    return abs(sum(z.real + z.imag for z in q))


def test_cosine_term_matches_hand_formula():
    x, y, _ = _emb()
    labels = torch.tensor([0.0, 3.5, 1.0, 3.5, 5.0], dtype=torch.float64)
    sims = [_cos(x[i], y[i]) for i in range(5)]
    got = losses.cosine_term(x, y, labels, tau=7.0)
    assert got.item() == pytest.approx(_ranking_by_hand(sims, labels.tolist(), 7.0), rel=1e-5)


def test_angle_term_matches_hand_formula():
    x, y, _ = _emb(d=10)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5], dtype=torch.float64)
    sims = [_angle_by_hand(x[i], y[i]) for i in range(5)]
    assert losses.angle_similarity(x, y).tolist() == pytest.approx(sims, rel=1e-5, abs=1e-6)
    got = losses.angle_term(x, y, labels, tau=20.0)
    assert got.item() == pytest.approx(_ranking_by_hand(sims, labels.tolist(), 20.0), rel=1e-5)


def test_ibn_term_matches_hand_formula():
    a, p, n = _emb(n=4)
    tau = 20.0
    expected = 0.0
    targets = list(p) + list(n)
    for i in range(4):
        logits = [tau * _cos(a[i], t) for t in targets]
        expected += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    expected /= 4
    assert losses.ibn_term(a, p, n, tau=tau).item() == pytest.approx(expected, rel=1e-5)
    # without hard negatives only the positives are candidates
    no_neg = (
        sum(
            -(tau * _cos(a[i], p[i]) - math.log(sum(math.exp(tau * _cos(a[i], t)) for t in p)))
            for i in range(4)
        )
        / 4
    )
    assert losses.ibn_term(a, p, None, tau=tau).item() == pytest.approx(no_neg, rel=1e-5)


def test_anglel_loss_combines_weighted_terms():
    a, p, n = _emb(n=6)
    loss = losses.AnglELoss(cosine_w=0.5, ibn_w=20.0, angle_w=1.0, cosine_tau=10, ibn_tau=15, angle_tau=20)
    x, y = torch.cat([a, a]), torch.cat([p, n])
    labels = torch.cat([torch.ones(6), torch.zeros(6)])
    expected = (
        0.5 * losses.cosine_term(x, y, labels, 10)
        + 20 * losses.ibn_term(a, p, n, 15)
        + losses.angle_term(x, y, labels, 20)
    )
    torch.testing.assert_close(loss(a, p, n), expected.float())
    # the released BeLLM weights are the defaults
    d = losses.AnglELoss()
    assert (d.cosine_w, d.ibn_w, d.angle_w, d.cosine_tau, d.ibn_tau, d.angle_tau) == (0, 20, 1, 20, 20, 20)


def test_scored_pairs_use_cosine_and_angle_only():
    a, p, _ = _emb(n=5)
    scores = torch.tensor([0.0, 4.2, 2.5, 5.0, 1.0])
    loss = losses.AnglELoss(cosine_w=1.0, ibn_w=20.0, angle_w=1.0)
    expected = losses.cosine_term(a, p, scores) + losses.angle_term(a, p, scores)
    torch.testing.assert_close(loss(a, p, scores=scores), expected.float())


def test_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss
    except ImportError:
        from sentence_transformers.losses import AnglELoss, CoSENTLoss
    del st
    a, p, n = (t.float() for t in _emb(n=6, d=16, seed=3))
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 1.0, 0.0])
    st_angle, st_cosent = AnglELoss(model=None, scale=20.0), CoSENTLoss(model=None, scale=20.0)
    # scored pairs
    expected = st_angle.compute_loss_from_embeddings([a, p], scores)
    torch.testing.assert_close(losses.angle_term(a, p, scores, 20.0), expected)
    expected = st_cosent.compute_loss_from_embeddings([a, p], scores)
    torch.testing.assert_close(losses.cosine_term(a, p, scores, 20.0), expected)
    # triplets: ST builds (anchor, pos) labelled 1 and (anchor, neg) labelled 0, as AnglE does
    ours = losses.AnglELoss(cosine_w=0.0, ibn_w=0.0, angle_w=1.0)(a, p, n)
    torch.testing.assert_close(ours, st_angle.compute_loss_from_embeddings([a, p, n], None))


def test_gradients_flow_and_bad_input():
    a, p, n = (t.float().requires_grad_() for t in _emb(n=4))
    losses.AnglELoss()(a, p, n).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (a, p, n))
    with pytest.raises(ValueError, match="cosine_w"):
        losses.AnglELoss(cosine_w=-1)
    with pytest.raises(ValueError, match="shape"):
        losses.AnglELoss()(a, p[:3], n)
    with pytest.raises(ValueError, match="negative"):
        losses.AnglELoss()(a, p)
