"""Influence of training samples on a query through the probe: ``I(x, y) = -g_yᵀ H⁻¹ g_x``.

``H`` is the curvature of the probe's regularised training loss at θ̂ (mean cross-entropy plus
``λ/2 |θ|²``) plus ``damping · I``: by default its Gauss–Newton form (positive definite, so every
solver converges), or the exact Hessian (``curvature="hessian"``), which a tanh MLP can leave
indefinite even at a minimum of the loss. Sign convention (Koh & Liang): ``I(x, y)`` is the change of
the query's loss when x is up-weighted; a **negative** I means x lowers the loss on y, i.e. x
supports the probe's view of y. :class:`InfluenceScorer` reports ``support = -I`` so that larger
means more supportive.

Solvers for ``s = H⁻¹ g_y`` (one per query; each candidate then costs one dot product):

* ``lissa`` — ``H⁻¹v ≈ (1/μ) Σ_{t<T} (I - H/μ)^t v`` with stochastic Hessian–vector products on
  mini-batches; divergence (a growing, non-finite or exploding iterate) doubles μ and restarts,
  logged, up to 3 times, then raises :class:`SolverError`.
* ``cg`` — conjugate gradient on exact full-data Hessian–vector products (torch.func).
* ``explicit`` — forms H and solves by Cholesky; the reference, for probes with at most
  ``EXPLICIT_MAX_PARAMS`` parameters (it needs p² floats).
* ``ekfac`` — eigenvalue-corrected Kronecker factors of the Gauss–Newton matrix, one block per
  layer (:class:`EKFAC`); formed once from the training rows, then a query's solve is a few small
  matrix products (well under a millisecond). An approximation: cross-layer curvature is dropped.
  Its faithfulness is measured against retraining by ``gif influence-check`` like the others.

Candidates' gradients are never materialised at query time: a linear layer's per-sample gradient
is the outer product ``δ aᵀ`` of its output error and input, so ``sᵀ g_x = Σ_l δ_lᵀ S_l a_l`` and
``|g_x|² = Σ_l |δ_l|² |a_l|²`` (see :func:`gif_core.gradients.layer_factors`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vjp

from .config import InfluenceConfig
from .errors import SolverError
from .gradients import flatten, layer_factors, param_dict
from .probe import Probe
from .threads import on_one_thread

log = logging.getLogger(__name__)

EXPLICIT_MAX_PARAMS = 20_000


def _unflatten(v: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, t in like.items():
        out[k] = v[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


@dataclass
class SolveReport:
    solver: str
    iterations: int
    seconds: float
    residual: float = float("nan")
    scale: float = float("nan")
    restarts: int = 0
    history: list[float] = field(default_factory=list)


class HessianOperator:
    """Hessian–vector products of the regularised probe loss on the training embeddings."""

    def __init__(self, model: Probe, e: torch.Tensor, y: torch.Tensor, weight_decay: float,
                 damping: float = 0.0, curvature: str = "ggn"):
        self.model, self.e, self.y = model, e, y
        self.curvature = curvature
        self.params = param_dict(model)
        self.weight_decay, self.damping = weight_decay, damping
        self.p = sum(t.numel() for t in self.params.values())

        def loss(params, eb, yb):
            logits = functional_call(model, params, (eb,))
            ce = torch.nn.functional.cross_entropy(logits, yb)
            return ce + 0.5 * weight_decay * sum((t * t).sum() for t in params.values())

        self._grad = grad(loss)

    def hvp(self, v: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """(H_batch + damping·I) v for the samples ``idx`` (all when None); v (p,) -> (p,)."""
        eb = self.e if idx is None else self.e[idx]
        yb = self.y if idx is None else self.y[idx]
        tangent = _unflatten(v, self.params)
        if self.curvature == "ggn":
            return self._ggn_vp(v, tangent, eb)
        # forward-over-reverse: the directional derivative of the gradient along v
        _, hv = jvp(lambda p: self._grad(p, eb, yb), (self.params,), (tangent,))
        return flatten(hv, batch=False) + self.damping * v

    def _ggn_vp(self, v: torch.Tensor, tangent, eb: torch.Tensor) -> torch.Tensor:
        """Gauss–Newton product ``(Jᵀ H_out J / B + λ + damping) v``; PSD everywhere, so the
        solvers converge even where the probe's true Hessian has negative directions.

        Written out for the probe's three tanh layers: one forward pass carrying the tangent
        (J v), the softmax curvature, one backward pass (Jᵀ u). :func:`ggn_vp_reference` is the
        torch.func twin used in tests.
        """
        m = self.model
        w1, b1, w2, b2, w3, b3 = (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias,
                                  m.fc3.weight, m.fc3.bias)
        t = tangent
        with torch.no_grad():
            a1 = torch.tanh(eb @ w1.T + b1)  # (B, h)
            a2 = torch.tanh(a1 @ w2.T + b2)  # (B, h)
            prob = torch.softmax(a2 @ w3.T + b3, dim=1)  # (B, C)
            s1, s2 = 1 - a1 * a1, 1 - a2 * a2
            # J v: tangent of the logits
            dz1 = eb @ t["fc1.weight"].T + t["fc1.bias"]
            dz2 = a1 @ t["fc2.weight"].T + (s1 * dz1) @ w2.T + t["fc2.bias"]
            ju = a2 @ t["fc3.weight"].T + (s2 * dz2) @ w3.T + t["fc3.bias"]  # (B, C)
            # Hessian of cross-entropy in the logits: diag(p) - p pᵀ, row by row
            u = (prob * ju - prob * (prob * ju).sum(1, keepdim=True)) / eb.shape[0]
            # Jᵀ u
            d2 = (u @ w3) * s2
            d1 = (d2 @ w2) * s1
            out = torch.cat([(d1.T @ eb).reshape(-1), d1.sum(0), (d2.T @ a1).reshape(-1),
                             d2.sum(0), (u.T @ a2).reshape(-1), u.sum(0)])
        return out + (self.weight_decay + self.damping) * v

    def ggn_vp_reference(self, v: torch.Tensor, idx: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """torch.func twin of the Gauss–Newton product (jvp, softmax curvature, vjp); tests."""
        eb = self.e if idx is None else self.e[idx]
        tangent = _unflatten(v, self.params)

        def logits_fn(p):
            return functional_call(self.model, p, (eb,))

        logits, ju = jvp(logits_fn, (self.params,), (tangent,))
        prob = torch.softmax(logits, dim=1)
        hu = prob * ju - prob * (prob * ju).sum(1, keepdim=True)
        _, pullback = vjp(logits_fn, self.params)
        (gv,) = pullback(hu / eb.shape[0])
        return flatten(gv, batch=False) + (self.weight_decay + self.damping) * v

    def full_hvp(self, v: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        n = self.e.shape[0]
        out = torch.zeros_like(v)
        for start in range(0, n, batch):
            idx = torch.arange(start, min(n, start + batch))
            # the L2 and damping terms are per-batch constants: weight each batch by its share
            out += self.hvp(v, idx) * (len(idx) / n)
        return out

    @on_one_thread
    def dense(self) -> torch.Tensor:
        """The (p, p) damped Hessian; refuses probes over ``EXPLICIT_MAX_PARAMS`` parameters."""
        if self.p > EXPLICIT_MAX_PARAMS:
            raise SolverError(
                f"explicit solve: the probe has p={self.p} parameters; forming H needs p² = "
                f"{self.p**2 * 4 / 2**30:.1f} GiB. Use solver 'cg' or 'lissa', or a probe with "
                f"p <= {EXPLICIT_MAX_PARAMS} (smaller --hidden)."
            )
        eye = torch.eye(self.p, dtype=self.e.dtype)
        cols = [self.full_hvp(eye[i]) for i in range(self.p)]
        h = torch.stack(cols, dim=1)
        return 0.5 * (h + h.T)

    @on_one_thread
    def top_eigenvalue(self, iters: int = 30, seed: int = 0) -> float:
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(self.p, generator=gen, dtype=self.e.dtype)
        v /= v.norm()
        lam = 0.0
        for _ in range(iters):
            hv = self.full_hvp(v)
            lam = float(v @ hv)
            v = hv / hv.norm().clamp_min(1e-30)
        return lam


@on_one_thread
def lissa(op: HessianOperator, v: torch.Tensor, config: InfluenceConfig, scale: float,
          max_restarts: int = 3) -> tuple[torch.Tensor, SolveReport]:
    """LiSSA estimate of ``(H + damping·I)⁻¹ v``."""
    t0 = time.perf_counter()
    if scale <= 0:
        raise SolverError(f"lissa: scale μ must be > 0, got {scale}. Pass scale=0 at build time "
                          f"to measure it from the Hessian's top eigenvalue.")
    n = op.e.shape[0]
    vnorm = float(v.norm())
    for restart in range(max_restarts + 1):
        gen = torch.Generator().manual_seed(config.seed)
        h = v.clone()
        history = []
        diverged = False
        for _ in range(config.depth):
            idx = torch.randint(0, n, (min(config.batch_size, n),), generator=gen)
            h = v + h - op.hvp(h, idx) / scale
            norm = float(h.norm())
            history.append(norm)
            # the series converges only when μ > λ_max / 2 (spectral radius of I - H/μ below 1)
            if not math.isfinite(norm) or norm > 1e6 * max(vnorm, 1e-30):
                diverged = True
                break
        if not diverged:
            out = h / scale
            report = SolveReport("lissa", config.depth, time.perf_counter() - t0, scale=scale,
                                 restarts=restart, history=history)
            return out, report
        log.warning("lissa diverged at term %d with scale %.3g; retrying with scale %.3g",
                    len(history), scale, 2 * scale)
        scale *= 2
    raise SolverError(f"lissa diverged after {max_restarts} scale increases (last scale "
                      f"{scale / 2:.3g}). Raise influence.damping or influence.scale, or use "
                      f"solver 'cg'.")


@on_one_thread
def conjugate_gradient(op: HessianOperator, v: torch.Tensor, config: InfluenceConfig,
                       tol: float = 1e-6) -> tuple[torch.Tensor, SolveReport]:
    """CG on exact full-data Hessian–vector products; H + damping·I must be positive definite."""
    t0 = time.perf_counter()
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = float(r @ r)
    bnorm = math.sqrt(rs) or 1.0
    it = 0
    for it in range(1, config.depth + 1):
        hp = op.full_hvp(p)
        curv = float(p @ hp)
        if curv <= 0:
            raise SolverError(f"cg: non-positive curvature {curv:.3g} at iteration {it}; the "
                              f"Hessian is not positive definite here. Raise influence.damping.")
        alpha = rs / curv
        x += alpha * p
        r -= alpha * hp
        rs_new = float(r @ r)
        if math.sqrt(rs_new) / bnorm < tol:
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x, SolveReport("cg", it, time.perf_counter() - t0, residual=math.sqrt(rs) / bnorm)


def cholesky_factor(op: HessianOperator) -> torch.Tensor:
    """Cholesky factor (float64) of the damped curvature; formed once, reused per query."""
    h = op.dense().double()
    try:
        return torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError as exc:
        raise SolverError("explicit: H + damping·I is not positive definite; raise "
                          "influence.damping.") from exc


@on_one_thread
def explicit_solve(op: HessianOperator, v: torch.Tensor, chol: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, SolveReport]:
    """Exact ``(H + damping·I)⁻¹ v``; pass ``chol`` from :func:`cholesky_factor` to skip forming H."""
    t0 = time.perf_counter()
    chol = cholesky_factor(op) if chol is None else chol
    x = torch.cholesky_solve(v.double().unsqueeze(1), chol).squeeze(1).to(v.dtype)
    return x, SolveReport("explicit", 1, time.perf_counter() - t0)


class EKFAC:
    """Eigenvalue-corrected Kronecker-factored (EK-FAC) inverse of the damped Gauss–Newton matrix.

    For each linear layer ``l`` (weights and bias together, ``M_l = [W_l b_l]``) the Gauss–Newton
    block is ``(1/N) Σ_i Σ_c (a_i a_iᵀ) ⊗ (δ_ic δ_icᵀ)``, where ``a_i`` is the layer's input (with a
    constant 1) and ``δ_ic`` is column c of ``J_iᵀ L_i`` — the logits' Jacobian with respect to
    the layer's pre-activations, applied to a square root ``L_i Lᵢᵀ = diag(p_i) - p_i p_iᵀ`` of the
    softmax curvature. K-FAC keeps ``A = E[a aᵀ]`` and ``G = E[Σ_c δ δᵀ]``; EK-FAC keeps their
    eigenvectors ``Q_A, Q_G`` and replaces the Kronecker eigenvalues by the exact diagonal of the
    block in that basis, ``Λ[o, k] = (1/N) Σ_i Σ_c (q_Goᵀ δ_ic)² (q_Akᵀ a_i)²`` (George et al.,
    2018). L2 and damping add ``λ + damping`` to every eigenvalue.

    Args:
        model: the probe (three tanh layers, see :class:`~gif_core.probe.Probe`).
        e, y: training rows the curvature is taken over (labels are not needed for the
            Gauss–Newton matrix, only the model's own predictions).
        weight_decay, damping: as in :class:`HessianOperator`.
        batch: rows per chunk while accumulating (bounds memory to ``batch × C²`` floats).
    """

    def __init__(self, model: Probe, e: torch.Tensor, weight_decay: float, damping: float,
                 batch: int = 2048):
        t0 = time.perf_counter()
        self.model = model
        self.shapes = [(layer.out_features, layer.in_features) for layer in model.layers()]
        n = e.shape[0]
        with torch.no_grad():
            a_sum = [torch.zeros(i + 1, i + 1, dtype=torch.float64) for _, i in self.shapes]
            g_sum = [torch.zeros(o, o, dtype=torch.float64) for o, _ in self.shapes]
            for s in range(0, n, batch):
                acts, errs = self._factors(e[s:s + batch])
                for l_, (a, b) in enumerate(zip(acts, errs, strict=True)):
                    a_sum[l_] += (a.T @ a).double()
                    g_sum[l_] += torch.einsum("boc,bpc->op", b, b).double()
            self.q_a, self.q_g = [], []
            for a, g in zip(a_sum, g_sum, strict=True):
                self.q_a.append(torch.linalg.eigh(a / n)[1].float())
                self.q_g.append(torch.linalg.eigh(g / n)[1].float())
            lam = [torch.zeros(o, i + 1, dtype=torch.float64) for o, i in self.shapes]
            for s in range(0, n, batch):
                acts, errs = self._factors(e[s:s + batch])
                for l_, (a, b) in enumerate(zip(acts, errs, strict=True)):
                    gd = torch.einsum("op,bpc->boc", self.q_g[l_].T, b).pow(2).sum(2)  # (B, out)
                    ad = (a @ self.q_a[l_]).pow(2)  # (B, in+1)
                    lam[l_] += (gd.T @ ad).double()
            self.lam = [(x / n + weight_decay + damping).float() for x in lam]
        self.build_seconds = time.perf_counter() - t0
        log.info("ekfac: %d rows, %d layers in %.2fs", n, len(self.shapes), self.build_seconds)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The factors as named tensors (saved with safetensors in the index directory)."""
        out = {}
        for i, (qa, qg, lam) in enumerate(zip(self.q_a, self.q_g, self.lam, strict=True)):
            out[f"layer{i}.q_a"], out[f"layer{i}.q_g"], out[f"layer{i}.lam"] = qa, qg, lam
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_state_dict(cls, model: Probe, state: dict[str, torch.Tensor]) -> EKFAC:
        """Factors saved by :meth:`state_dict` for this probe; shapes are checked."""
        self = cls.__new__(cls)
        self.model = model
        self.shapes = [(layer.out_features, layer.in_features) for layer in model.layers()]
        self.q_a, self.q_g, self.lam = [], [], []
        for i, (o, n_in) in enumerate(self.shapes):
            qa, qg, lam = (state[f"layer{i}.q_a"], state[f"layer{i}.q_g"],
                           state[f"layer{i}.lam"])
            if qa.shape != (n_in + 1, n_in + 1) or qg.shape != (o, o) or lam.shape != (o, n_in + 1):
                raise SolverError(f"ekfac factors do not fit the probe (layer {i}); rebuild the "
                                  f"index.")
            self.q_a.append(qa.float())
            self.q_g.append(qg.float())
            self.lam.append(lam.float())
        self.build_seconds = 0.0
        return self

    def _factors(self, e: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Inputs (B, in+1) and curvature-weighted output errors (B, out, C) of each layer."""
        m = self.model
        w1, b1, w2, b2, w3, b3 = (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias,
                                  m.fc3.weight, m.fc3.bias)
        a1 = torch.tanh(e @ w1.T + b1)
        a2 = torch.tanh(a1 @ w2.T + b2)
        prob = torch.softmax(a2 @ w3.T + b3, dim=1)  # (B, C)
        sq = prob.sqrt()
        root = torch.diag_embed(sq) - prob.unsqueeze(2) * sq.unsqueeze(1)  # (B, C, C)
        d3 = root
        d2 = (1 - a2 * a2).unsqueeze(2) * torch.einsum("ch,bcj->bhj", w3, d3)
        d1 = (1 - a1 * a1).unsqueeze(2) * torch.einsum("gh,bgj->bhj", w2, d2)
        ones = torch.ones(e.shape[0], 1, dtype=e.dtype)
        acts = [torch.cat([x, ones], dim=1) for x in (e, a1, a2)]
        return acts, [d1, d2, d3]

    def _blocks(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat (p,) vector into per-layer ``[W b]`` matrices (out, in+1)."""
        out, i = [], 0
        for o, n_in in self.shapes:
            w = v[i:i + o * n_in].reshape(o, n_in)
            b = v[i + o * n_in:i + o * n_in + o].reshape(o, 1)
            out.append(torch.cat([w, b], dim=1))
            i += o * n_in + o
        return out

    @on_one_thread
    def solve(self, v: torch.Tensor) -> tuple[torch.Tensor, SolveReport]:
        """``(H + damping·I)⁻¹ v`` under the EK-FAC approximation; v (p,) -> (p,)."""
        t0 = time.perf_counter()
        parts = []
        for mat, qa, qg, lam in zip(self._blocks(v.float()), self.q_a, self.q_g, self.lam,
                                    strict=True):
            x = qg @ ((qg.T @ mat @ qa) / lam) @ qa.T
            parts += [x[:, :-1].reshape(-1), x[:, -1]]
        return torch.cat(parts).to(v.dtype), SolveReport("ekfac", 1, time.perf_counter() - t0)


class InfluenceScorer:
    """Per-query influence of candidates: one iHVP for the query, one dot product per candidate."""

    def __init__(self, model: Probe, train_e: torch.Tensor, train_y: torch.Tensor,
                 weight_decay: float, config: InfluenceConfig, scale: float,
                 ekfac: EKFAC | None = None):
        self.model, self.config = model, config
        self.op = HessianOperator(model, train_e, train_y, weight_decay, config.damping,
                                  config.curvature)
        self.scale = scale
        self._chol: torch.Tensor | None = None
        self._ekfac = ekfac

    def inverse_hvp(self, v: torch.Tensor) -> tuple[torch.Tensor, SolveReport]:
        if self.config.solver == "lissa":
            return lissa(self.op, v, self.config, self.scale)
        if self.config.solver == "cg":
            return conjugate_gradient(self.op, v, self.config)
        if self.config.solver == "ekfac":
            if self._ekfac is None:
                self._ekfac = EKFAC(self.model, self.op.e, self.op.weight_decay, self.op.damping)
            return self._ekfac.solve(v)
        if self._chol is None:
            self._chol = cholesky_factor(self.op)
        return explicit_solve(self.op, v, self._chol)

    def score(self, e_query: torch.Tensor, y_query: torch.Tensor, e_cand: torch.Tensor,
              y_cand: torch.Tensor) -> tuple[np.ndarray, np.ndarray, SolveReport]:
        """Influence of each candidate on the query.

        Returns:
            ``influence`` (K,) = -g_yᵀ H⁻¹ g_x (negative = supportive), ``normalised`` (K,) the
            cosine between H⁻¹g_y and g_x as a support score in [-1, 1] (+1 = most supportive),
            and the solver's report.
        """
        g_y = flat_grads(self.model, e_query.unsqueeze(0), y_query.reshape(1))[0]  # (p,)
        s, report = self.inverse_hvp(g_y)
        dots, norms = factored_dots(self.model, s, e_cand, y_cand)  # (K,), (K,)
        influence = -dots
        normalised = dots / (norms * s.norm()).clamp_min(1e-30)
        return influence.cpu().numpy(), normalised.cpu().numpy(), report


def flat_grads(model: Probe, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients (B, p) in parameter order, from the layer factors ``δ aᵀ``."""
    parts = []
    for a, d in layer_factors(model, e, y):
        g = d.unsqueeze(2) * a.unsqueeze(1)  # (B, out, in+1)
        parts += [g[:, :, :-1].reshape(len(e), -1), g[:, :, -1]]
    return torch.cat(parts, dim=1)


def factored_dots(model: Probe, s: torch.Tensor, e: torch.Tensor, y: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sᵀ g_x`` and ``|g_x|`` for each row without forming ``g_x``: with ``S_l = [W b]``-shaped
    blocks of s, ``sᵀ g_x = Σ_l δ_lᵀ S_l a_l`` and ``|g_x|² = Σ_l |δ_l|² |a_l|²``."""
    dots = torch.zeros(len(e), dtype=s.dtype)
    sq = torch.zeros(len(e), dtype=s.dtype)
    i = 0
    for a, d in layer_factors(model, e, y):
        o, n_in = d.shape[1], a.shape[1] - 1
        w = s[i:i + o * n_in].reshape(o, n_in)
        b = s[i + o * n_in:i + o * n_in + o]
        i += o * n_in + o
        dots += ((a[:, :-1] @ w.T + b) * d).sum(1)
        sq += (a * a).sum(1) * (d * d).sum(1)
    return dots, sq.sqrt()
