"""Per-sample gradients and projections against their slow reference twins."""

from __future__ import annotations

import numpy as np
import torch

from gif_core.config import ProbeConfig, ProjectionConfig
from gif_core.gradients import layer_factors, per_sample_grads, per_sample_grads_loop
from gif_core.probe import Probe, train_probe
from gif_core.projection import DenseProjector, KroneckerProjector, dense_reference


def _probe(seed=0, d=12, h=6, c=4, n=9):
    torch.manual_seed(seed)
    model = Probe(d, h, c)
    e = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    y = torch.randint(0, c, (n,))
    return model, e, y


def test_vmap_grads_equal_loop():
    model, e, y = _probe()
    fast, slow = per_sample_grads(model, e, y), per_sample_grads_loop(model, e, y)
    assert fast.shape == (9, model.num_params)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_layer_factors_are_the_gradient():
    model, e, y = _probe(1)
    g = per_sample_grads_loop(model, e, y)
    parts = []
    for a, d in layer_factors(model, e, y):
        outer = d.unsqueeze(2) * a.unsqueeze(1)  # (B, out, in+1)
        parts += [outer[:, :, :-1].reshape(len(e), -1), outer[:, :, -1]]
    torch.testing.assert_close(torch.cat(parts, 1), g, rtol=1e-5, atol=1e-6)


def test_dense_projection_equals_materialised_matrix():
    model, e, y = _probe(2)
    cfg = ProjectionConfig(kind="dense", dim=16, block=7, seed=5)
    c = DenseProjector(model.num_params, cfg).project(model, e, y)
    ref = per_sample_grads_loop(model, e, y) @ dense_reference(model.num_params, cfg).T
    torch.testing.assert_close(c, ref, rtol=1e-4, atol=1e-5)


def test_kronecker_projection_equals_materialised_matrix():
    model, e, y = _probe(3)
    proj = KroneckerProjector(model, ProjectionConfig(dim=30, seed=1))
    c = proj.project(model, e, y)
    ref = per_sample_grads_loop(model, e, y) @ proj.reference_matrix().T
    assert c.shape == (9, proj.dim) and proj.dim == 27
    torch.testing.assert_close(c, ref, rtol=1e-4, atol=1e-5)


def test_projections_preserve_inner_products_on_average():
    model, e, y = _probe(4, d=40, h=16, c=8, n=6)
    g = per_sample_grads(model, e, y)
    exact = g @ g.T
    est = torch.zeros_like(exact)
    for seed in range(200):
        c = KroneckerProjector(model, ProjectionConfig(dim=64, seed=seed)).project(model, e, y)
        est += c @ c.T / 200
    rel = (est - exact).norm() / exact.norm()
    assert rel < 0.15


def test_probe_training_is_seeded_and_converges():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((200, 10)).astype(np.float32)
    y = (e[:, 0] > 0).astype(np.int64)
    cfg = ProbeConfig(hidden=8, epochs=10, batch_size=32, seed=7)
    m1, r1 = train_probe(e, y, 2, cfg)
    m2, _ = train_probe(e, y, 2, cfg)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert r1.accuracy > 0.95 and r1.grad_norm < 1e-2
