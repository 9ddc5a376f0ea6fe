"""Seeded random projections ``c = P g`` of per-sample gradients to m dims.

* :class:`DenseProjector` — Gaussian ``P`` (entries N(0, 1/m)) generated ``block`` columns at a
  time from a seed per block, so the whole m × p matrix is never held: memory is m × block.
  Cost per batch: one pass of the random generator over all p columns (regenerated each call).
* :class:`KroneckerProjector` — per linear layer, ``P_l = B_l ⊗ A_l`` with small Gaussian factors,
  so ``P_l vec(δ aᵀ) = (B_l δ) ⊗ (A_l a)``: it works on the layer factors (a, δ) and never forms
  the p-dim gradient. Both preserve inner products in expectation: ``E[c·c'] = g·g'``.

:func:`dense_reference` materialises P (tests only, tiny probes).
"""

from __future__ import annotations

import math

import torch

from .config import ProjectionConfig
from .gradients import layer_factors, per_sample_grads
from .probe import Probe


def _block_generator(seed: int, block: int) -> torch.Generator:
    # one independent stream per (seed, block) so any block can be regenerated alone
    return torch.Generator().manual_seed((seed * 1_000_003 + block * 7_919 + 17) % (2**63 - 1))


class DenseProjector:
    def __init__(self, p: int, config: ProjectionConfig):
        self.p, self.m, self.seed, self.block = p, config.dim, config.seed, config.block
        self.dim = self.m

    def _block(self, j: int, device) -> torch.Tensor:
        cols = min(self.block, self.p - j * self.block)
        gen = _block_generator(self.seed, j)
        pj = torch.randn(self.m, cols, generator=gen) / math.sqrt(self.m)  # (m, cols)
        return pj.to(device)

    def project_grads(self, g: torch.Tensor) -> torch.Tensor:
        """(B, p) -> (B, m)."""
        out = torch.zeros(g.shape[0], self.m, dtype=g.dtype, device=g.device)
        for j in range(math.ceil(self.p / self.block)):
            cols = slice(j * self.block, (j + 1) * self.block)
            out += g[:, cols] @ self._block(j, g.device).T.to(g.dtype)
        return out

    def project(self, model: Probe, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.project_grads(per_sample_grads(model, e, y))


def dense_reference(p: int, config: ProjectionConfig) -> torch.Tensor:
    """The full (m, p) matrix the dense projector applies; for tests on tiny probes only."""
    proj = DenseProjector(p, config)
    return torch.cat([proj._block(j, "cpu") for j in range(math.ceil(p / proj.block))], dim=1)


def _split_dims(total: int, layers: int) -> list[tuple[int, int]]:
    """Split m over layers, each as m_out × m_in close to square."""
    dims = []
    for i in range(layers):
        m_l = total // layers + (1 if i < total % layers else 0)
        m_out = max(1, int(math.sqrt(m_l)))
        dims.append((m_out, max(1, m_l // m_out)))
    return dims


class KroneckerProjector:
    def __init__(self, model: Probe, config: ProjectionConfig):
        self.seed = config.seed
        self.factors: list[tuple[torch.Tensor, torch.Tensor]] = []
        layers = model.layers()
        for i, (layer, (m_out, m_in)) in enumerate(zip(layers, _split_dims(config.dim,
                                                                            len(layers)),
                                                       strict=True)):
            gen = _block_generator(config.seed, 10_000 + i)
            out_f, in_f = layer.weight.shape
            b = torch.randn(m_out, out_f, generator=gen) / math.sqrt(m_out)  # (m_out, out)
            a = torch.randn(m_in, in_f + 1, generator=gen) / math.sqrt(m_in)  # (m_in, in+1)
            self.factors.append((b, a))
        self.dim = sum(b.shape[0] * a.shape[0] for b, a in self.factors)

    def project(self, model: Probe, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, d) embeddings and labels -> (B, m) projected gradients."""
        parts = []
        for (a, d), (pb, pa) in zip(layer_factors(model, e, y), self.factors, strict=True):
            bd = d @ pb.T.to(d)  # (B, m_out)
            aa = a @ pa.T.to(a)  # (B, m_in)
            parts.append((bd.unsqueeze(2) * aa.unsqueeze(1)).reshape(e.shape[0], -1))
        return torch.cat(parts, dim=1)

    def reference_matrix(self) -> torch.Tensor:
        """Block-diagonal (m, p) matrix ⊕_l (B_l ⊗ A_l) in the layout of flattened [W, b] grads.

        Tests only. Parameter order per layer is W (out × in, row-major) then b (out).
        """
        blocks = []
        for pb, pa in self.factors:
            kron = torch.kron(pb, pa)  # (m_out*m_in, out*(in+1)) acting on vec of δ ⊗ [a; 1]
            out_f, in1 = pb.shape[1], pa.shape[1]
            # reorder columns from the [W | b] augmented layout to flat (W row-major, then b)
            idx = torch.arange(out_f * in1).reshape(out_f, in1)
            order = torch.cat([idx[:, :-1].reshape(-1), idx[:, -1]])
            blocks.append(kron[:, order])
        return torch.block_diag(*blocks)


def make_projector(model: Probe, config: ProjectionConfig):
    if config.kind == "dense":
        return DenseProjector(model.num_params, config)
    return KroneckerProjector(model, config)
