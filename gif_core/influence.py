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
from .gradients import flatten, param_dict, per_sample_grads
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


class InfluenceScorer:
    """Per-query influence of candidates: one iHVP for the query, one dot product per candidate."""

    def __init__(self, model: Probe, train_e: torch.Tensor, train_y: torch.Tensor,
                 weight_decay: float, config: InfluenceConfig, scale: float):
        self.model, self.config = model, config
        self.op = HessianOperator(model, train_e, train_y, weight_decay, config.damping,
                                  config.curvature)
        self.scale = scale
        self._chol: torch.Tensor | None = None

    def inverse_hvp(self, v: torch.Tensor) -> tuple[torch.Tensor, SolveReport]:
        if self.config.solver == "lissa":
            return lissa(self.op, v, self.config, self.scale)
        if self.config.solver == "cg":
            return conjugate_gradient(self.op, v, self.config)
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
        g_y = per_sample_grads(self.model, e_query.unsqueeze(0), y_query.reshape(1))[0]  # (p,)
        s, report = self.inverse_hvp(g_y)
        g_x = per_sample_grads(self.model, e_cand, y_cand)  # (K, p)
        dots = g_x @ s  # (K,)
        influence = -dots
        denom = g_x.norm(dim=1) * s.norm()
        normalised = dots / denom.clamp_min(1e-30)
        return influence.cpu().numpy(), normalised.cpu().numpy(), report
