"""Influence solvers against the explicit damped solve on a tiny trained probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gif_core.config import InfluenceConfig, ProbeConfig
from gif_core.errors import ConfigError, SolverError
from gif_core.gradients import per_sample_grads
from gif_core.influence import (
    EKFAC,
    HessianOperator,
    InfluenceScorer,
    conjugate_gradient,
    explicit_solve,
    factored_dots,
    flat_grads,
    lissa,
)
from gif_core.probe import train_probe


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((300, 10)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    y = ((e[:, 0] > 0).astype(np.int64) + 2 * (e[:, 1] > 0)).astype(np.int64)
    model, _ = train_probe(e, y, 4, ProbeConfig(hidden=6, epochs=30, batch_size=64,
                                                 weight_decay=1e-2))
    return model, torch.from_numpy(e), torch.from_numpy(y)


def test_ggn_product_matches_torch_func(tiny):
    model, e, y = tiny
    op = HessianOperator(model, e, y, 1e-2, 0.01)
    v = torch.randn(op.p, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.hvp(v), op.ggn_vp_reference(v), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_cg_and_lissa_agree_with_explicit(tiny, curvature):
    model, e, y = tiny
    op = HessianOperator(model, e, y, 1e-2, 0.05, curvature)
    v = torch.randn(op.p, generator=torch.Generator().manual_seed(1))
    ref, _ = explicit_solve(op, v)
    x_cg, rep = conjugate_gradient(op, v, InfluenceConfig(solver="cg", depth=300))
    assert float((x_cg - ref).norm() / ref.norm()) < 1e-4
    scale = 1.1 * op.top_eigenvalue()
    x_l, _ = lissa(op, v, InfluenceConfig(depth=800, batch_size=300, damping=0.05), scale)
    assert float((x_l - ref).norm() / ref.norm()) < 0.05


def test_lissa_divergence_scales_up_then_converges(tiny):
    model, e, y = tiny
    op = HessianOperator(model, e, y, 1e-2, 0.05)
    v = torch.randn(op.p, generator=torch.Generator().manual_seed(2))
    lam = op.top_eigenvalue()
    ref, _ = explicit_solve(op, v)
    # the series diverges when μ < λ_max / 2; the solver must notice and raise μ
    x, rep = lissa(op, v, InfluenceConfig(depth=800, batch_size=300, damping=0.05), 0.2 * lam)
    assert rep.restarts >= 1 and rep.scale > lam / 2
    assert float((x - ref).norm() / ref.norm()) < 0.05


def test_explicit_refuses_large_probe():
    from gif_core.probe import Probe

    model = Probe(384, 64, 64)
    op = HessianOperator(model, torch.zeros(4, 384), torch.zeros(4, dtype=torch.long), 1e-3)
    with pytest.raises(SolverError, match="explicit solve.*GiB"):
        op.dense()


@pytest.mark.parametrize("kwargs", [{"damping": -1.0}, {"depth": 0}, {"solver": "newton"}])
def test_bad_solver_settings(kwargs):
    with pytest.raises(ConfigError):
        InfluenceConfig(**kwargs)


def test_scorer_sign_and_normalisation(tiny):
    model, e, y = tiny
    scorer = InfluenceScorer(model, e, y, 1e-2, InfluenceConfig(solver="cg", depth=200), 1.0)
    infl, norm, _ = scorer.score(e[0], y[0], e[:20], y[:20])
    # a sample is the strongest supporter of itself: most negative influence, cosine near +1
    assert int(np.argmin(infl)) == 0 and int(np.argmax(norm)) == 0
    assert np.all(np.abs(norm) <= 1 + 1e-5)


def test_explicit_scorer_factors_once_and_matches_cg(tiny):
    model, e, y = tiny
    cfg = InfluenceConfig(solver="explicit", damping=0.05)
    scorer = InfluenceScorer(model, e, y, 1e-2, cfg, 1.0)
    infl, _, _ = scorer.score(e[3], y[3], e[:30], y[:30])
    chol = scorer._chol
    infl2, _, _ = scorer.score(e[4], y[4], e[:30], y[:30])
    assert scorer._chol is chol  # the factor is reused, not formed again
    cg = InfluenceScorer(model, e, y, 1e-2, InfluenceConfig(solver="cg", depth=300,
                                                              damping=0.05), 1.0)
    ref, _, _ = cg.score(e[3], y[3], e[:30], y[:30])
    np.testing.assert_allclose(infl, ref, rtol=1e-3, atol=1e-5)
    assert not np.allclose(infl, infl2)


def test_ekfac_eigenvalues_are_the_exact_block_diagonal(tiny):
    """EK-FAC keeps, per layer, the exact diagonal of the Gauss–Newton block in the Kronecker
    eigenbasis; check it against the explicitly formed damped matrix."""
    model, e, y = tiny
    op = HessianOperator(model, e, y, 1e-2, 0.05)
    h = op.dense().double()
    ek = EKFAC(model, e, 1e-2, 0.05)
    start = 0
    for layer, (out, n_in) in enumerate(ek.shapes):
        w = torch.arange(start, start + out * n_in).reshape(out, n_in)
        b = torch.arange(start + out * n_in, start + out * n_in + out).reshape(out, 1)
        idx = torch.cat([w, b], dim=1).reshape(-1)  # [W b] row-major, as EK-FAC blocks it
        q = torch.kron(ek.q_g[layer].double(), ek.q_a[layer].double())
        diag = torch.diagonal(q.T @ h[idx][:, idx] @ q)
        torch.testing.assert_close(diag, ek.lam[layer].double().reshape(-1), rtol=1e-4,
                                   atol=1e-6)
        start += out * n_in + out
    # dropping cross-layer curvature costs accuracy, but the solve still points the exact way
    v = torch.randn(op.p, generator=torch.Generator().manual_seed(4))
    x, _ = ek.solve(v)
    ref, _ = explicit_solve(op, v)
    cos = float(torch.nn.functional.cosine_similarity(x.double(), ref.double(), dim=0))
    assert cos > 0.9


def test_factored_dots_match_materialised_gradients(tiny):
    model, e, y = tiny
    g = per_sample_grads(model, e[:20], y[:20])
    torch.testing.assert_close(flat_grads(model, e[:20], y[:20]), g, rtol=1e-5, atol=1e-6)
    s = torch.randn(g.shape[1], generator=torch.Generator().manual_seed(5))
    dots, norms = factored_dots(model, s, e[:20], y[:20])
    torch.testing.assert_close(dots, g @ s, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norms, g.norm(dim=1), rtol=1e-5, atol=1e-6)
