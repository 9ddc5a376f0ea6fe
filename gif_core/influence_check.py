"""Is the influence refinement right? Ground truth by retraining the probe, solver by solver.

:func:`run_check` takes training embeddings and pseudo-labels, trains a *check probe* on them and
scores, per solver, the influence ``I(x, y) = -g_yᵀ H⁻¹ g_x`` of every training row on every
query's probe loss. It then retrains the probe to see what really happens:

* **LDS** (linear datamodeling score): ``M`` random subsets holding ``fraction`` of the rows; the
  probe is retrained on each and each query's loss measured. Up-weighting x by ε moves the query
  loss by ``ε·I(x, y)``, so training on S (every subset the same size) predicts a loss of
  ``const + Σ_{x∈S} I(x, y) / |S|``. LDS = mean over queries of Spearman(Σ_{x∈S} I(x, y), loss).
* **LOO**: for a few queries, the ``loo_top`` rows of largest ``|I|`` under the reference solver
  (explicit if run, else the first solver) are removed one at a time; Spearman(-I, Δloss),
  since removing x (ε = -1/N) predicts ``Δloss = -I/N``.

Retraining (documented choice): **warm start** from θ̂, full-batch L-BFGS in float64 on the
subset's regularised objective (mean cross-entropy + λ/2 |θ|²) until its gradient is below 1e-9
or ``retrain_steps`` iterations. Influence functions model exactly this local response; float64
is needed because removing one of 2,000 rows moves the loss by ~1e-4. ``retrain="scratch"``
instead reruns :func:`gif_core.probe.train_probe` (same config, same seed) on the subset.

The check probe: a seeded subsample of ``train_rows`` (default 2,000) index rows, the index's
probe config except the hidden width (default 16, p ≈ 7.6k with 67 classes) so that the explicit
reference (``p`` Hessian–vector products and a p×p Cholesky) takes seconds; the index's own
width 32 (p ≈ 15.6k) works with ``hidden=32`` but forming H then takes minutes. θ̂ is polished in
float64 (L-BFGS to |∇| < 1e-9) so that the influence formula's stationarity assumption holds;
the solvers then run in float32, as in the product.

Solvers: ``lissa``, ``cg`` and ``explicit`` from :mod:`gif_core.influence` (explicit here via
:class:`ExplicitFactor`: H formed and Cholesky-factored once, then two triangular solves per
query — the product's :func:`~gif_core.influence.explicit_solve` re-forms H on every query), and
two precomputed ones, :class:`PreconditionedIndex`:

* ``preconditioned`` — ``K = P H Pᵀ`` (the damped Gauss–Newton matrix seen through the projection
  P, m Hessian–vector products at build time); every training row stores ``K^{-1/2} P g_x`` and a
  query is one gradient, one (m × p) product and one dot product per candidate. With P = I this
  *is* the explicit solve.
* ``preconditioned_fisher`` — ``K = G Gᵀ/N + (λ + damping) P Pᵀ`` from the projected gradients
  G = P g alone (empirical Fisher; no Hessian–vector products).

``TRAK`` is run beside them through the ``traker`` package (CPU ``BasicProjector``, one model, its
margin output), on the same check probe and rows; its score τ is "supports the correct output",
so its predicted loss is ``-Σ τ``.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from .config import InfluenceConfig, ProbeConfig
from .errors import ConfigError, SolverError
from .gradients import per_sample_grads
from .influence import EKFAC, HessianOperator, conjugate_gradient, lissa
from .probe import Probe, regularised_loss, train_probe
from .projection import dense_reference
from .threads import single_thread

log = logging.getLogger(__name__)

CHECK_SOLVERS = ("lissa", "cg", "explicit", "ekfac", "preconditioned", "preconditioned_fisher")
RETRAIN_MODES = ("warm", "scratch")


@dataclass
class CheckConfig:
    """Settings of :func:`run_check` (see the module docstring for what each measures)."""

    train_rows: int = 2000
    """Seeded subsample of the index used as the check probe's training set."""
    queries: int = 20
    subsets: int = 32
    """M, random subsets for the LDS."""
    fraction: float = 0.5
    loo_queries: int = 3
    loo_top: int = 20
    solvers: tuple[str, ...] = CHECK_SOLVERS
    hidden: int = 16
    proj_dim: int = 512
    """m for the preconditioned index and TRAK (0 = no projection: the full gradient)."""
    retrain: str = "warm"
    retrain_steps: int = 100
    polish_steps: int = 1000
    """L-BFGS iterations that polish θ̂ (float64) before any influence is taken."""
    trak: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(what)

        need(self.train_rows >= 20, f"influence-check: train_rows must be >= 20, got "
                                    f"{self.train_rows}. Use 2000.")
        need(self.queries >= 1, f"influence-check: --queries must be >= 1, got {self.queries}.")
        need(self.subsets >= 3, f"influence-check: --subsets must be >= 3 (Spearman needs "
                                f"several points), got {self.subsets}. Use 32.")
        need(0 < self.fraction < 1, f"influence-check: fraction must be in (0, 1), got "
                                    f"{self.fraction}. Use 0.5.")
        need(self.loo_queries >= 0 and self.loo_top >= 0,
             "influence-check: loo_queries and loo_top must be >= 0.")
        bad = [s for s in self.solvers if s not in CHECK_SOLVERS]
        need(not bad and len(self.solvers) > 0,
             f"influence-check: unknown solver(s) {bad or '(none given)'}; use a comma-separated "
             f"subset of {','.join(CHECK_SOLVERS)}.")
        need(self.hidden >= 2, f"influence-check: hidden must be >= 2, got {self.hidden}.")
        need(self.proj_dim >= 0, f"influence-check: proj_dim must be >= 0, got "
                                 f"{self.proj_dim}. Use 512 (0 = full gradient).")
        need(self.retrain in RETRAIN_MODES, f"influence-check: retrain must be one of "
                                            f"{RETRAIN_MODES}, got {self.retrain!r}. Use 'warm'.")
        need(self.retrain_steps >= 1, "influence-check: retrain_steps must be >= 1. Use 100.")


# -- retraining ------------------------------------------------------------------------------


def polish(model: Probe, e: torch.Tensor, y: torch.Tensor, weight_decay: float, steps: int,
           weights: torch.Tensor | None = None) -> Probe:
    """A float64 copy of ``model`` after full-batch L-BFGS on the regularised objective.

    ``weights`` (N,) reweights the samples (mean of ``w_i · CE_i`` over ``sum(w)``); rows with
    weight 0 are left out. Stops when |∇| < 1e-9 or after ``steps`` iterations.
    """
    m = copy.deepcopy(model).double()
    e = e.double()
    if weights is not None:
        keep = weights > 0
        e, y, weights = e[keep], y[keep], weights[keep].double()
    opt = torch.optim.LBFGS(m.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        if weights is None:
            loss = regularised_loss(m, e, y, weight_decay)
        else:
            ce = torch.nn.functional.cross_entropy(m(e), y, reduction="none")
            l2 = sum((p * p).sum() for p in m.parameters())
            loss = (weights * ce).sum() / weights.sum() + 0.5 * weight_decay * l2
        loss.backward()
        return loss

    with single_thread():
        opt.step(closure)
    m.zero_grad(set_to_none=True)
    m.eval()
    return m


def query_losses(model: Probe, e_q: torch.Tensor, y_q: torch.Tensor) -> np.ndarray:
    """Cross-entropy of each query at the model; (Q,) float64."""
    p = next(model.parameters())
    with torch.no_grad(), single_thread():
        logits = model(e_q.to(p.dtype))
        return torch.nn.functional.cross_entropy(logits, y_q, reduction="none").double().numpy()


def _retrain(theta: Probe, e: torch.Tensor, y: torch.Tensor, keep: np.ndarray, config: CheckConfig,
             probe_config: ProbeConfig, num_classes: int) -> Probe:
    if config.retrain == "warm":
        w = torch.zeros(len(e), dtype=torch.float64)
        w[torch.from_numpy(keep)] = 1.0
        return polish(theta, e, y, probe_config.weight_decay, config.retrain_steps, w)
    model, _ = train_probe(e[keep].numpy(), y[keep].numpy(), num_classes, probe_config)
    return polish(model, e[keep], y[keep], probe_config.weight_decay, config.retrain_steps)


# -- solvers ---------------------------------------------------------------------------------


class ExplicitFactor:
    """``H`` formed and Cholesky-factored once; each query is then two triangular solves.

    Same result as :func:`gif_core.influence.explicit_solve`, which re-forms H on every call.
    """

    def __init__(self, op: HessianOperator):
        t0 = time.perf_counter()
        h = op.dense().double()
        try:
            self.chol = torch.linalg.cholesky(h)
        except torch.linalg.LinAlgError as exc:
            raise SolverError("explicit: H + damping·I is not positive definite; raise "
                              "influence.damping.") from exc
        self.build_seconds = time.perf_counter() - t0

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        with single_thread():
            return torch.cholesky_solve(v.double().unsqueeze(-1), self.chol).squeeze(-1).to(v.dtype)


class PreconditionedIndex:
    """Training rows stored as ``ĝ_x = K^{-1/2} P g_x`` so that ``I(x, y) ≈ -ĝ_yᵀ ĝ_x``.

    Args:
        model, e, y: the probe and its training rows (those H is taken over).
        weight_decay, damping: as in :class:`~gif_core.influence.HessianOperator`.
        dim: m, rows of the Gaussian projection P (0 = P = I, the full gradient).
        curvature: ``ggn`` (``K = P H Pᵀ`` by m Hessian–vector products) or ``fisher``
            (``K = P(GᵀG/N + (λ + damping) I)Pᵀ`` from the gradients alone).
        rows: which of the rows to store (default all); H always uses all of ``e``.
    """

    def __init__(self, model: Probe, e: torch.Tensor, y: torch.Tensor, weight_decay: float,
                 damping: float, dim: int, curvature: str = "ggn", seed: int = 0,
                 rows: np.ndarray | None = None, batch: int = 1024):
        if curvature not in ("ggn", "fisher"):
            raise ConfigError(f"preconditioned: curvature must be 'ggn' or 'fisher', got "
                              f"{curvature!r}. Use 'ggn'.")
        t0 = time.perf_counter()
        self.model = model
        p = model.num_params
        with single_thread():
            if dim == 0 or dim >= p:
                proj = torch.eye(p, dtype=e.dtype)
            else:
                from .config import ProjectionConfig

                proj = dense_reference(p, ProjectionConfig(dim=dim, seed=seed)).to(e.dtype)
            m = proj.shape[0]
            if curvature == "ggn":
                op = HessianOperator(model, e, y, weight_decay, damping, "ggn")
                hp = torch.stack([op.full_hvp(proj[i]) for i in range(m)])  # (m, p) = P H
                k = hp @ proj.T
            else:
                k = torch.zeros(m, m, dtype=torch.float64)
                for s in range(0, len(e), batch):
                    g = per_sample_grads(model, e[s:s + batch], y[s:s + batch]) @ proj.T
                    k += g.double().T @ g.double()
                k = (k / len(e)).to(e.dtype) + (weight_decay + damping) * (proj @ proj.T)
            k = 0.5 * (k + k.T).double()
            evals, evecs = torch.linalg.eigh(k)
            if float(evals.min()) <= 0:
                raise SolverError(f"preconditioned: K has a non-positive eigenvalue "
                                  f"{float(evals.min()):.3g}; raise influence.damping.")
            k_inv_half = (evecs * evals.rsqrt()) @ evecs.T
            # fold K^{-1/2} into the projection: a query is one (m × p) product
            self.w = (k_inv_half @ proj.double()).to(e.dtype)  # (m, p)
            rows = np.arange(len(e)) if rows is None else rows
            vecs = []
            for s in range(0, len(rows), batch):
                r = torch.from_numpy(rows[s:s + batch])
                vecs.append(per_sample_grads(model, e[r], y[r]) @ self.w.T)
            self.vectors = torch.cat(vecs)  # (N, m)
        self.rows = rows
        self.dim, self.curvature = m, curvature
        self.build_seconds = time.perf_counter() - t0
        log.info("preconditioned index: m=%d curvature=%s, %d rows in %.1fs", m, curvature,
                 len(rows), self.build_seconds)

    def query_vector(self, e_q: torch.Tensor, y_q: torch.Tensor) -> torch.Tensor:
        """``K^{-1/2} P g_y`` for each query; e_q (Q, d), y_q (Q,) -> (Q, m)."""
        with single_thread():
            return per_sample_grads(self.model, e_q, y_q) @ self.w.T

    def influence(self, e_q: torch.Tensor, y_q: torch.Tensor,
                  positions: np.ndarray | None = None) -> np.ndarray:
        """``-ĝ_yᵀ ĝ_x`` (Q, K) for stored rows at ``positions`` (all when None)."""
        qv = self.query_vector(e_q, y_q)
        vecs = self.vectors if positions is None else self.vectors[torch.from_numpy(positions)]
        with single_thread():
            return (-(qv @ vecs.T)).numpy()


def _solve_fn(name: str, op: HessianOperator, icfg: InfluenceConfig, scale: float,
              explicit: ExplicitFactor | None, ekfac: EKFAC | None = None):
    if name == "ekfac":
        assert ekfac is not None
        return lambda v: ekfac.solve(v)[0]
    if name == "lissa":
        return lambda v: lissa(op, v, icfg, scale)[0]
    if name == "cg":
        return lambda v: conjugate_gradient(op, v, icfg)[0]
    if name == "explicit":
        assert explicit is not None
        return explicit.solve
    raise ConfigError(f"no iHVP solver named {name!r}")


def influence_matrix(solve, model: Probe, g_train: torch.Tensor, e_q: torch.Tensor,
                     y_q: torch.Tensor) -> tuple[np.ndarray, list[torch.Tensor], float]:
    """(Q, N) influence of every training row on every query, the iHVPs, and seconds/query."""
    g_q = per_sample_grads(model, e_q, y_q)
    t0 = time.perf_counter()
    sols = [solve(g_q[j]) for j in range(len(e_q))]
    secs = (time.perf_counter() - t0) / len(e_q)
    with single_thread():
        infl = -(torch.stack(sols) @ g_train.T)
    return infl.numpy(), sols, secs


# -- TRAK ------------------------------------------------------------------------------------


def trak_scores(model: Probe, e: torch.Tensor, y: torch.Tensor, e_q: torch.Tensor,
                y_q: torch.Tensor, proj_dim: int, seed: int = 0, batch: int = 256
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """TRAK scores τ (Q, N) from the ``traker`` package (one model, CPU ``BasicProjector``).

    τ > 0 means the training row supports the query's correct output (lowers its loss).
    """
    try:
        import trak
        from trak import TRAKer
    except ImportError as exc:
        raise ConfigError("TRAK needs the 'traker' package: pip install traker (or pass "
                          "trak=False / --no-trak).") from exc
    t0 = time.perf_counter()
    n = len(e)
    m = copy.deepcopy(model).float()
    dim = proj_dim if 0 < proj_dim < m.num_params else m.num_params
    if dim <= 100:
        # traker 0.3.2: with one projection block (proj_dim <= its block_size 100) the CPU
        # BasicProjector is freed by finalize_features and never regenerated for scoring
        raise ConfigError(f"TRAK: proj_dim {dim} <= 100 hits a traker 0.3.2 CPU projector bug "
                          f"(AttributeError 'proj_matrix'); use proj_dim > 100.")
    with tempfile.TemporaryDirectory() as tmp, single_thread():
        tr = TRAKer(model=m, task="image_classification", train_set_size=n, save_dir=tmp,
                    device="cpu", proj_dim=dim, use_half_precision=False, projector_seed=seed,
                    logging_level=logging.WARNING)
        state = m.state_dict()
        tr.load_checkpoint(state, model_id=0)
        for s in range(0, n, batch):
            tr.featurize(batch=(e[s:s + batch].float(), y[s:s + batch]),
                         num_samples=min(batch, n - s))
        tr.finalize_features()
        tr.start_scoring_checkpoint(exp_name="check", checkpoint=state, model_id=0,
                                    num_targets=len(e_q))
        tr.score(batch=(e_q.float(), y_q), num_samples=len(e_q))
        scores = np.asarray(tr.finalize_scores(exp_name="check"), dtype=np.float64)  # (N, Q)
    info = {"package": f"traker {getattr(trak, '__version__', '?')}", "proj_dim": dim,
            "projector": "BasicProjector (CPU, normal)", "models": 1,
            "seconds": time.perf_counter() - t0}
    return scores.T, info


# -- the check -------------------------------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def lds(pred_effect: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> tuple[float, list]:
    """LDS from per-row predicted loss effects (Q, N), subset masks (M, N), losses (M, Q)."""
    pred = masks.astype(np.float64) @ pred_effect.T  # (M, Q)
    per_q = [_spearman(pred[:, j], losses[:, j]) for j in range(losses.shape[1])]
    return float(np.nanmean(per_q)), per_q


def _rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(np.mean([float((x.double() - z.double()).norm() / z.double().norm())
                          for x, z in zip(a, b, strict=True)]))


def run_check(e: np.ndarray, y: np.ndarray, num_classes: int, e_q: np.ndarray, y_q: np.ndarray,
              config: CheckConfig | None = None, probe_config: ProbeConfig | None = None,
              influence_config: InfluenceConfig | None = None) -> dict[str, Any]:
    """Train the check probe on (e, y), score every solver, retrain for ground truth.

    Args:
        e, y: training embeddings (N, d) and labels (N,), already subsampled.
        e_q, y_q: query embeddings (Q, d) and labels (Q,).

    Returns:
        A JSON-able dict: per solver ``lds``, ``loo_spearman``, ``seconds`` (per query, the iHVP
        or the query-vector product; candidates' dot products excluded), ``rel_err_vs_exact``
        for the iterative solvers, TRAK's ``lds`` and ``seconds``, and the setup.
    """
    config = config or CheckConfig()
    base = probe_config or ProbeConfig()
    pcfg = ProbeConfig(**{**asdict(base), "hidden": config.hidden})
    icfg = influence_config or InfluenceConfig()
    t_all = time.perf_counter()
    et = torch.as_tensor(np.asarray(e, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    eq = torch.as_tensor(np.asarray(e_q, dtype=np.float32))
    yq = torch.as_tensor(np.asarray(y_q, dtype=np.int64))
    n = len(et)

    t0 = time.perf_counter()
    model0, _ = train_probe(et.numpy(), yt.numpy(), num_classes, pcfg)
    theta64 = polish(model0, et, yt, pcfg.weight_decay, config.polish_steps)
    theta = copy.deepcopy(theta64).float()
    with torch.enable_grad():
        theta64.zero_grad(set_to_none=True)
        loss = regularised_loss(theta64, et.double(), yt, pcfg.weight_decay)
        loss.backward()
        gnorm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in theta64.parameters())))
        theta64.zero_grad(set_to_none=True)
        loss = float(loss.detach())
    train_seconds = time.perf_counter() - t0
    log.info("check probe: N=%d p=%d loss=%.4f |∇|=%.1e", n, theta.num_params, float(loss),
             gnorm)

    with single_thread():
        op = HessianOperator(theta, et, yt, pcfg.weight_decay, icfg.damping, icfg.curvature)
        lam_max = op.top_eigenvalue(iters=20)
        scale = icfg.scale or 1.1 * (lam_max + icfg.damping)
        g_train = per_sample_grads(theta, et, yt)

    explicit = None
    if "explicit" in config.solvers:
        explicit = ExplicitFactor(op)
    ekfac = EKFAC(theta, et, pcfg.weight_decay, icfg.damping) if "ekfac" in config.solvers else None

    # -- predicted effects per method: (Q, N) "loss change when the row is up-weighted"
    effects: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, Any]] = {}
    solutions: dict[str, list[torch.Tensor]] = {}
    for name in config.solvers:
        if name.startswith("preconditioned"):
            pre = PreconditionedIndex(theta, et, yt, pcfg.weight_decay, icfg.damping,
                                      config.proj_dim,
                                      "fisher" if name.endswith("fisher") else "ggn",
                                      seed=config.seed)
            t0 = time.perf_counter()
            for j in range(len(eq)):
                pre.influence(eq[j:j + 1], yq[j:j + 1])
            secs = (time.perf_counter() - t0) / len(eq)
            effects[name] = pre.influence(eq, yq)
            out[name] = {"seconds": secs, "build_seconds": pre.build_seconds, "dim": pre.dim}
            continue
        solve = _solve_fn(name, op, icfg, scale, explicit, ekfac)
        infl, sols, secs = influence_matrix(solve, theta, g_train, eq, yq)
        effects[name], solutions[name] = infl, sols
        out[name] = {"seconds": secs}
        if name == "explicit":
            out[name]["build_seconds"] = explicit.build_seconds
        if name == "ekfac":
            out[name]["build_seconds"] = ekfac.build_seconds
    if "explicit" in solutions:
        for name in ("lissa", "cg", "ekfac"):
            if name in solutions:
                out[name]["rel_err_vs_exact"] = _rel_err(solutions[name], solutions["explicit"])
    trak_info: dict[str, Any] | None = None
    if config.trak:
        try:
            tau, trak_info = trak_scores(theta, et, yt, eq, yq, config.proj_dim, config.seed)
            effects["trak"] = -tau
            out["trak"] = {"seconds": trak_info["seconds"], **trak_info}
        except Exception as exc:  # report, never hide: the check's other numbers still stand
            log.warning("TRAK failed: %s", exc)
            out["trak"] = {"error": f"{type(exc).__name__}: {exc}"}

    # -- LDS: retrain on M random subsets
    rng = np.random.default_rng(config.seed + 1)
    size = int(round(config.fraction * n))
    masks = np.zeros((config.subsets, n), dtype=bool)
    losses = np.zeros((config.subsets, len(eq)))
    t0 = time.perf_counter()
    for s in range(config.subsets):
        keep = np.sort(rng.choice(n, size, replace=False))
        masks[s, keep] = True
        losses[s] = query_losses(_retrain(theta64, et, yt, keep, config, pcfg, num_classes),
                                 eq, yq)
    lds_seconds = time.perf_counter() - t0
    for name, eff in effects.items():
        out[name]["lds"], out[name]["lds_per_query"] = lds(eff, masks, losses)

    # -- LOO on the top rows of the reference method
    loo_seconds = 0.0
    ref = "explicit" if "explicit" in effects else next(iter(effects))
    if config.loo_queries and config.loo_top:
        t0 = time.perf_counter()
        warm_cfg = config if config.retrain == "warm" else CheckConfig(
            **{**asdict(config), "retrain": "warm"})
        # the reference is the same number of steps with nothing removed: θ̂ is only
        # approximately stationary, and its own drift must not count as a removal's effect
        base_loss = query_losses(_retrain(theta64, et, yt, np.arange(n), warm_cfg, pcfg,
                                          num_classes), eq, yq)
        per_method: dict[str, list[float]] = {k: [] for k in effects}
        for j in range(min(config.loo_queries, len(eq))):
            top = np.argsort(-np.abs(effects[ref][j]))[:config.loo_top]
            delta = np.zeros(len(top))
            for t, row in enumerate(top):
                keep = np.delete(np.arange(n), row)
                m = _retrain(theta64, et, yt, keep, warm_cfg, pcfg, num_classes)
                delta[t] = query_losses(m, eq[j:j + 1], yq[j:j + 1])[0] - base_loss[j]
            for k, eff in effects.items():
                per_method[k].append(_spearman(-eff[j, top], delta))
        for k, vals in per_method.items():
            out[k]["loo_spearman"] = float(np.nanmean(vals))
        loo_seconds = time.perf_counter() - t0

    for v in out.values():
        for key in ("lds", "loo_spearman", "seconds", "rel_err_vs_exact", "build_seconds"):
            if isinstance(v.get(key), float) and math.isfinite(v[key]):
                v[key] = round(v[key], 5)
        if "lds_per_query" in v:
            v["lds_per_query"] = [round(x, 4) for x in v["lds_per_query"]]
    return {
        "setup": {
            "train_rows": n, "queries": len(eq), "subsets": config.subsets,
            "fraction": config.fraction, "hidden": config.hidden,
            "probe_params": theta.num_params, "classes": num_classes,
            "proj_dim": config.proj_dim, "retrain": config.retrain,
            "retrain_steps": config.retrain_steps, "polish_steps": config.polish_steps,
            "loo_queries": config.loo_queries,
            "loo_top": config.loo_top, "loo_reference": ref,
            "damping": icfg.damping, "weight_decay": pcfg.weight_decay,
            "lissa": {"depth": icfg.depth, "batch_size": icfg.batch_size, "scale": scale},
            "lambda_max": lam_max, "theta_grad_norm": gnorm,
            "seconds": {"train": round(train_seconds, 2), "lds_retrain": round(lds_seconds, 2),
                        "loo_retrain": round(loo_seconds, 2),
                        "total": round(time.perf_counter() - t_all, 2)},
        },
        "solvers": out,
    }


# -- on an index -----------------------------------------------------------------------------


def index_queries(engine, train_rows: np.ndarray, n_queries: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Queries for a check on ``engine``'s index: half perturbed (``word_drop``) copies of rows
    in the training subsample, half index rows outside it (unperturbed); (Q, d), (Q,), meta."""
    from .errors import InputError
    from .queries import perturb

    rng = np.random.default_rng(seed + 2)
    n_in = (n_queries + 1) // 2
    outside = np.setdiff1d(np.arange(len(engine)), train_rows)
    src_in = rng.choice(train_rows, n_in, replace=False)
    src_out = rng.choice(outside, min(n_queries - n_in, len(outside)), replace=False)
    texts, meta = [], []
    for i, row in enumerate(src_in):
        text = engine.samples.text(int(row))
        try:
            text = perturb(text, "word_drop", seed=seed * 1000 + i) or text
        except InputError:
            pass
        texts.append(text)
        meta.append({"source_row": int(row), "kind": "word_drop", "in_training": True})
    e_in, lab_in, _ = engine.fingerprint(texts) if texts else (np.zeros((0, 384)), [], None)
    e_out = np.asarray(engine.embeddings[np.sort(src_out)], dtype=np.float32)
    lab_out = np.asarray(engine.labels[np.sort(src_out)], dtype=np.int64)
    meta += [{"source_row": int(r), "kind": "held_out_row", "in_training": False}
             for r in np.sort(src_out)]
    return (np.vstack([e_in, e_out]).astype(np.float32),
            np.concatenate([np.asarray(lab_in, dtype=np.int64), lab_out]), meta)


def check_index(directory, config: CheckConfig | None = None, engine=None,
                influence: InfluenceConfig | None = None) -> dict[str, Any]:
    """:func:`run_check` on a seeded subsample of an index (read-only); ``influence`` overrides
    the index's own solver settings (damping, LiSSA depth and batch)."""
    from .engine import Engine

    config = config or CheckConfig()
    engine = engine or Engine.load(directory, warm=False)
    n = len(engine)
    rows = np.sort(np.random.default_rng(config.seed).choice(n, min(config.train_rows, n),
                                                             replace=False))
    e = np.asarray(engine.embeddings[rows], dtype=np.float32)
    y = np.asarray(engine.labels[rows], dtype=np.int64)
    e_q, y_q, meta = index_queries(engine, rows, config.queries, config.seed)
    out = run_check(e, y, len(engine.centroids), e_q, y_q, config, engine.config.probe,
                    influence or engine.config.influence)
    out["setup"]["index"] = str(directory)
    out["setup"]["queries_meta"] = meta
    return out


def time_refinement(engine, solvers=("lissa", "cg", "preconditioned"), queries: int = 5,
                    candidates: int = 100, proj_dim: int = 512, seed: int = 0
                    ) -> dict[str, Any]:
    """Per-query time of influence for ``candidates`` rows on the index's own probe.

    Each query: its gradient, one iHVP (or, preconditioned, one (m × p) product), the candidates'
    gradients and dot products — what :meth:`Engine.influence_for` does. ``explicit`` is skipped
    on the index probe when forming H would take long (p Hessian–vector products over all rows).
    """
    from .engine import HVP_SAMPLE

    n = len(engine)
    rng = np.random.default_rng(seed + 3)
    q_rows = rng.choice(n, queries, replace=False)
    cand = [np.sort(rng.choice(n, candidates, replace=False)) for _ in range(queries)]
    emb = lambda r: torch.from_numpy(np.asarray(engine.embeddings[r], dtype=np.float32))  # noqa
    lab = lambda r: torch.from_numpy(np.asarray(engine.labels[r], dtype=np.int64))  # noqa
    scorer = engine.influence_scorer()
    model = engine.probe
    out: dict[str, Any] = {"queries": queries, "candidates": candidates, "rows": n,
                           "probe_params": model.num_params,
                           "threads": "1 intra-op thread (gif_core.threads)"}
    for name in solvers:
        if name.startswith("preconditioned"):
            rows = np.arange(min(n, HVP_SAMPLE))
            pre = PreconditionedIndex(model, scorer.op.e, scorer.op.y, scorer.op.weight_decay,
                                      scorer.op.damping, proj_dim,
                                      "fisher" if name.endswith("fisher") else "ggn", seed,
                                      rows=np.arange(n) if n <= HVP_SAMPLE else rows)
            pre.influence(emb(q_rows[:1]), lab(q_rows[:1]), cand[0])  # warm
            t0 = time.perf_counter()
            for j in range(queries):
                pre.influence(emb(q_rows[j:j + 1]), lab(q_rows[j:j + 1]), cand[j])
            out[name] = {"ms_per_query": round((time.perf_counter() - t0) / queries * 1000, 2),
                         "build_seconds": round(pre.build_seconds, 2), "dim": pre.dim,
                         "bytes_per_row": pre.dim * 4}
            continue
        if name == "explicit":
            if model.num_params * n > 2e7:
                out[name] = {"skipped": f"forming H needs p={model.num_params} Hessian–vector "
                                        f"products over {n} rows; see the check probe's "
                                        f"explicit seconds"}
                continue
        cfg = InfluenceConfig(**{**asdict(engine.config.influence), "solver": name})
        sc = type(scorer)(model, scorer.op.e, scorer.op.y, scorer.op.weight_decay, cfg,
                          scorer.scale)
        t0 = time.perf_counter()
        with single_thread():
            sc.score(emb(q_rows[0]), lab(q_rows[:1])[0], emb(cand[0]), lab(cand[0]))  # factors
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for j in range(queries):
            with single_thread():
                sc.score(emb(q_rows[j]), lab(q_rows[j:j + 1])[0], emb(cand[j]), lab(cand[j]))
        out[name] = {"ms_per_query": round((time.perf_counter() - t0) / queries * 1000, 2),
                     "depth": cfg.depth, "setup_seconds": round(setup, 2)}
    return out
