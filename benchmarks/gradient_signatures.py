"""Can the gradient half of GIF's fingerprint earn its place? Variants of ĉ side by side.

    python benchmarks/gradient_signatures.py --index indexes/wiki --out runs/gradient_signatures

Planted perturbed copies of the index's own samples, 300 per kind, seed 777: the briefed set
(word_drop, typos, synonym; ``queries.npz``) and a harder set with headroom (prefix, chatty, ocr,
word_drop at rate 0.5; ``queries_hard.npz``), each encoded once and cached. Every variant then works from embeddings
only: it trains a probe (or a variant of it), computes projected per-sample gradients ``c`` for
the corpus and the queries (query label = nearest centroid), and ranks by exact inner product
(``faiss.IndexFlatIP``) on gradient-only ``ĉ`` and on ``[ê ; α·ĉ]``, against static-only ``ê``.
Writes ``results.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from torch import nn

from gif_core.config import LabelConfig, ProbeConfig, ProjectionConfig
from gif_core.engine import make_fingerprints
from gif_core.labels import assign, fit_centroids
from gif_core.probe import Probe, train_probe
from gif_core.projection import DenseProjector, KroneckerProjector
from gif_core.threads import single_thread

log = logging.getLogger("gradient_signatures")

KINDS = ("word_drop", "typos", "synonym")
"""The briefed query set; static-only ê is near its ceiling on it."""
HARD_KINDS = ("prefix", "chatty", "ocr", "word_drop_50")
"""A harder set with headroom: library kinds plus word_drop at drop_rate 0.5 (typo_rate 0.05)."""
ALL_KINDS = KINDS + HARD_KINDS
SETS = {"overall": KINDS, "overall_hard": HARD_KINDS}
N_PER_KIND = 300
QUERY_SEED = 777
ALPHAS = (0.1, 0.25, 0.5)


# -- data -----------------------------------------------------------------------------------


@dataclass
class Data:
    e: np.ndarray
    """(N, d) float32 corpus embeddings (unit rows)."""
    labels: np.ndarray
    """(N,) int64 k-means labels stored with the index."""
    centroids: np.ndarray
    eq: np.ndarray
    """(Q, d) float32 query embeddings."""
    q_rows: np.ndarray
    """(Q,) source row of each query."""
    q_kinds: np.ndarray
    """(Q,) kind of each query (str)."""


def _read_samples(index: Path) -> list[tuple[str, str]]:
    out = []
    with (index / "samples.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            out.append((rec["id"], rec["text"]))
    return out


def _hard_queries(samples: list[tuple[str, str]]) -> list[tuple[int, str, str]]:
    from gif_core.queries import generate_queries, word_drop

    row_of = {sid: i for i, (sid, _) in enumerate(samples)}
    made = [(row_of[q.source_ids[0]], q.kind, q.text)
            for q in generate_queries(samples, ["prefix", "chatty", "ocr"], N_PER_KIND,
                                      seed=QUERY_SEED)]
    order = np.random.default_rng([QUERY_SEED, 50]).permutation(len(samples))
    heavy = []
    for i in order:
        text = samples[int(i)][1]
        new = word_drop(text, np.random.default_rng([QUERY_SEED, 50, int(i)]), drop_rate=0.5,
                        typo_rate=0.05)
        if new.strip() and new != text and len(text.split()) >= 8:
            heavy.append((int(i), "word_drop_50", new))
        if len(heavy) == N_PER_KIND:
            break
    return made + heavy


def _cached_queries(index: Path, cache: Path, key: str, make: Callable[[], list[tuple[int, str,
                                                                                      str]]]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, source rows, kinds) of a query set, encoded once with the index's encoder."""
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            return z["eq"].astype(np.float32), z["rows"].astype(np.int64), z["kinds"].astype(str)
    from gif_core.engine import Engine

    made = make()
    engine = Engine.load(index, warm=False)
    eq = engine.encoder.encode([t for _, _, t in made]).astype(np.float32)
    rows = np.array([r for r, _, _ in made], dtype=np.int64)
    kinds = np.array([k for _, k, _ in made])
    text_hash = hashlib.sha256("\n".join(t for _, _, t in made).encode()).hexdigest()
    np.savez(cache, key=np.array(key), eq=eq, rows=rows, kinds=kinds,
             text_sha256=np.array(text_hash))
    return eq, rows, kinds


def load_data(index: Path, out: Path, hard: bool = True) -> Data:
    """Index arrays plus the query embeddings, encoded once and cached in ``out/queries.npz``
    (the briefed set) and ``out/queries_hard.npz``."""
    from gif_core.queries import generate_queries

    e = np.load(index / "embeddings.npy", allow_pickle=False).astype(np.float32)
    labels = np.load(index / "labels.npy", allow_pickle=False).astype(np.int64)
    centroids = np.load(index / "centroids.npy", allow_pickle=False).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)

    def main_set():
        samples = _read_samples(index)
        row_of = {sid: i for i, (sid, _) in enumerate(samples)}
        return [(row_of[q.source_ids[0]], q.kind, q.text)
                for q in generate_queries(samples, list(KINDS), N_PER_KIND, seed=QUERY_SEED)]

    parts = [_cached_queries(index, out / "queries.npz",
                             f"{KINDS}|{N_PER_KIND}|{QUERY_SEED}|{len(e)}", main_set)]
    if hard:
        parts.append(_cached_queries(index, out / "queries_hard.npz",
                                     f"{HARD_KINDS}|{N_PER_KIND}|{QUERY_SEED}|{len(e)}",
                                     lambda: _hard_queries(_read_samples(index))))
    return Data(e, labels, centroids, np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


# -- per-sample gradient factors --------------------------------------------------------------

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits (B, C), embeddings (B, d), labels (B,)) -> dL/dlogits (B, C), one row per sample."""


def hard_ce(temperature: float = 1.0) -> Objective:
    """``CE(z / T, ℓ)``: residual ``(softmax(z/T) − onehot) / T``; T = 1 is the library's loss."""

    def fn(z, e, y):
        p = torch.softmax(z / temperature, dim=1)
        p[torch.arange(len(y)), y] -= 1.0
        return p / temperature

    return fn


def smoothed_ce(eps: float) -> Objective:
    """CE against the smoothed target ``(1−ε)·onehot + ε/C``."""

    def fn(z, e, y):
        q = torch.full_like(z, eps / z.shape[1])
        q[torch.arange(len(y)), y] += 1.0 - eps
        return torch.softmax(z, dim=1) - q

    return fn


def soft_assignment(centroids: np.ndarray, tau: float) -> Objective:
    """CE against the sample's own soft assignment ``softmax(ê·μ / τ)`` over the centroids."""
    mu = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))

    def fn(z, e, y):
        return torch.softmax(z, dim=1) - torch.softmax(e @ mu.T / tau, dim=1)

    return fn


def reconstruction() -> Objective:
    """``½|f(e) − e|²`` of an autoencoding probe (output dim = d): residual ``f(e) − e``."""

    def fn(z, e, y):
        return z - e

    return fn


def layer_factors(model: Probe, e: torch.Tensor, y: torch.Tensor, objective: Objective
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per linear layer (inputs with a bias 1 (B, in+1), output errors δ (B, out)), by hand.

    Same as :func:`gif_core.gradients.layer_factors` for ``objective = hard_ce()``, but for any
    loss given by its logit residual.
    """
    with torch.no_grad():
        a0 = e
        a1 = torch.tanh(model.fc1(a0))
        a2 = torch.tanh(model.fc2(a1))
        z = model.fc3(a2)
        d3 = objective(z, e, y)
        d2 = (d3 @ model.fc3.weight) * (1 - a2 * a2)
        d1 = (d2 @ model.fc2.weight) * (1 - a1 * a1)
    ones = torch.ones(e.shape[0], 1, dtype=e.dtype)
    return [(torch.cat([a, ones], dim=1), d) for a, d in ((a0, d1), (a1, d2), (a2, d3))]


# -- projections -------------------------------------------------------------------------------


def _gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + salt * 7_919 + 17) % (2**63 - 1))


@dataclass
class Kron:
    """Per-layer Kronecker projector ``(B_l δ) ⊗ (A_l a)`` over a chosen subset of layers."""

    factors: dict[int, tuple[torch.Tensor, torch.Tensor]]
    per_layer_norm: bool = False

    @classmethod
    def library(cls, model: Probe, m: int, seed: int = 0) -> Kron:
        """The library's projector (same seeds, same m split), all three layers."""
        lib = KroneckerProjector(model, ProjectionConfig(kind="kronecker", dim=m, seed=seed))
        return cls(dict(enumerate(lib.factors)))

    @classmethod
    def layers(cls, model: Probe, m: int, layers: tuple[int, ...], seed: int = 0) -> Kron:
        """m split over ``layers`` only (each near-square m_out × m_in)."""
        out = {}
        for j, li in enumerate(layers):
            m_l = m // len(layers) + (1 if j < m % len(layers) else 0)
            m_out = max(1, int(math.sqrt(m_l)))
            m_in = max(1, m_l // m_out)
            w = model.layers()[li].weight
            gen = _gen(seed, 20_000 + li)
            out[li] = (torch.randn(m_out, w.shape[0], generator=gen) / math.sqrt(m_out),
                       torch.randn(m_in, w.shape[1] + 1, generator=gen) / math.sqrt(m_in))
        return cls(out)

    def __call__(self, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        parts = []
        for li, (pb, pa) in self.factors.items():
            a, d = factors[li]
            block = ((d @ pb.T).unsqueeze(2) * (a @ pa.T).unsqueeze(1)).reshape(len(a), -1)
            if self.per_layer_norm:
                block = block / block.norm(dim=1, keepdim=True).clamp_min(1e-12)
            parts.append(block)
        return torch.cat(parts, dim=1)


@dataclass
class Dense:
    """Gaussian ``P`` over the full flattened per-sample gradient (library DenseProjector)."""

    p: int
    m: int
    seed: int = 0

    def __call__(self, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        g = torch.cat([(d.unsqueeze(2) * a.unsqueeze(1)).reshape(len(a), -1)
                       for a, d in factors], dim=1)
        proj = DenseProjector(self.p, ProjectionConfig(kind="dense", dim=self.m, seed=self.seed))
        return proj.project_grads(g)


class Exact:
    """No projection: the full flattened per-sample gradient (p dims), the ceiling of any P."""

    def __call__(self, factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([(d.unsqueeze(2) * a.unsqueeze(1)).reshape(len(a), -1)
                          for a, d in factors], dim=1)


def fidelity(model: Probe, e: np.ndarray, y: np.ndarray, objective: Objective,
             projector: Callable, n: int = 400, seed: int = 0) -> float:
    """Pearson correlation of projected cosines ĉ·ĉ' with exact gradient cosines over all pairs
    of ``n`` random rows: how faithfully the projection keeps the gradient geometry."""
    rows = np.sort(np.random.default_rng(seed).choice(len(e), size=min(n, len(e)),
                                                      replace=False))
    g = unit(project_all(model, e[rows], y[rows], objective, Exact()))
    c = unit(project_all(model, e[rows], y[rows], objective, projector))
    iu = np.triu_indices(len(rows), 1)
    return float(np.corrcoef((g @ g.T)[iu], (c @ c.T)[iu])[0, 1])


def project_all(model: Probe, e: np.ndarray, y: np.ndarray, objective: Objective,
                projector: Callable, chunk: int = 1024) -> np.ndarray:
    """Projected per-sample gradients (N, m) float32."""
    parts = []
    for s in range(0, len(e), chunk):
        f = layer_factors(model, torch.from_numpy(e[s:s + chunk]),
                          torch.from_numpy(y[s:s + chunk]), objective)
        parts.append(projector(f).numpy())
    return np.concatenate(parts).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def whiten(cb: np.ndarray, cq: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """PCA/ZCA whitening of unit ĉ fitted on the corpus: ``(ĉ − μ) V (Λ + δ·mean Λ)^{-1/2}``."""
    cb, cq = unit(cb).astype(np.float64), unit(cq).astype(np.float64)
    mu = cb.mean(0)
    lam, vec = np.linalg.eigh(np.cov(cb - mu, rowvar=False))
    lam = np.maximum(lam, 0)
    w = vec / np.sqrt(lam + damping * lam.mean() + 1e-12)
    return ((cb - mu) @ w).astype(np.float32), ((cq - mu) @ w).astype(np.float32)


# -- probe training (the library's recipe, with any objective and checkpoints) -----------------


def train_variant(e: np.ndarray, y: np.ndarray, out_dim: int, config: ProbeConfig,
                  loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  checkpoints: tuple[int, ...] = ()) -> tuple[Probe, list[Probe]]:
    """Adam (cosine schedule) then full-batch L-BFGS on ``mean loss + λ/2 |θ|²``, as
    :func:`gif_core.probe.train_probe`; ``loss_fn(outputs, e, y)`` is the mean data loss.

    Returns the converged probe and copies taken after each epoch in ``checkpoints``."""
    import copy

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x, t = torch.from_numpy(e), torch.from_numpy(y)
    n, d = x.shape
    model = Probe(d, config.hidden, out_dim)

    def objective(xi, ti):
        l2 = sum((p * p).sum() for p in model.parameters())
        return loss_fn(model(xi), xi, ti) + 0.5 * config.weight_decay * l2

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * max(1, -(-n // config.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    snaps = []
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, config.batch_size):
            idx = perm[s:s + config.batch_size]
            loss = objective(x[idx], t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epoch in checkpoints:
            snaps.append(copy.deepcopy(model).eval())
    if config.lbfgs_steps:
        lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=config.lbfgs_steps,
                                  history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad(set_to_none=True)
            loss = objective(x, t)
            loss.backward()
            return loss

        lbfgs.step(closure)
    model.zero_grad(set_to_none=True)
    return model.eval(), snaps


def ce_loss(z, e, y):
    return nn.functional.cross_entropy(z, y)


def smoothed_loss(eps: float):
    def fn(z, e, y):
        return nn.functional.cross_entropy(z, y, label_smoothing=eps)

    return fn


def soft_loss(centroids: np.ndarray, tau: float):
    mu = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))

    def fn(z, e, y):
        return nn.functional.cross_entropy(z, torch.softmax(e @ mu.T / tau, dim=1))

    return fn


def mse_loss(z, e, y):
    return 0.5 * ((z - e) ** 2).sum(1).mean()


# -- evaluation --------------------------------------------------------------------------------


def knn_ranks(xb: np.ndarray, xq: np.ndarray, rows: np.ndarray, k: int = 100) -> np.ndarray:
    """1-based rank of each query's source row under exact inner product; 0 if beyond k."""
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
    hit = ids == rows[:, None]
    return np.where(hit.any(1), hit.argmax(1) + 1, 0)


def score_block(ranks: np.ndarray, kinds: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    groups = [(k, kinds == k) for k in ALL_KINDS if (kinds == k).any()]
    groups += [(name, np.isin(kinds, ks)) for name, ks in SETS.items() if np.isin(kinds, ks).any()]
    for name, sel in groups:
        r = ranks[sel]
        rr = np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)
        out[name] = {"n": int(len(r)), "p@1": float((r == 1).mean()), "mrr": float(rr.mean()),
                     "correct": int((r == 1).sum())}
    return out


@dataclass
class Variant:
    name: str
    why: str
    cb: np.ndarray
    cq: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def evaluate(v: Variant, data: Data, static_ranks: np.ndarray) -> dict[str, Any]:
    """Gradient-only and ``[ê ; α·ĉ]`` for each α; P@1/MRR per kind, wins/losses vs static."""
    res: dict[str, Any] = {"why": v.why, "dim": int(v.cb.shape[1]), "info": v.info,
                           "methods": {}}
    methods = {"gradient_only": (make_fingerprints(data.e, v.cb, 0, embedding=False),
                                 make_fingerprints(data.eq, v.cq, 0, embedding=False))}
    for a in ALPHAS:
        methods[f"alpha={a:g}"] = (make_fingerprints(data.e, v.cb, a),
                                   make_fingerprints(data.eq, v.cq, a))
    for m, (xb, xq) in methods.items():
        r = knn_ranks(xb, xq, data.q_rows)
        block = score_block(r, data.q_kinds)
        for name, ks in SETS.items():
            if name in block:
                sel = np.isin(data.q_kinds, ks)
                s1, v1 = static_ranks[sel] == 1, r[sel] == 1
                block[name]["wins_vs_static"] = int((v1 & ~s1).sum())
                block[name]["losses_vs_static"] = int((s1 & ~v1).sum())
        res["methods"][m] = block
    return res


# -- variants ----------------------------------------------------------------------------------


def library_probe(index: Path) -> Probe:
    from safetensors.torch import load_file

    manifest = json.loads((index / "manifest.json").read_text())
    sd = load_file(str(index / "probe.safetensors"))
    model = Probe(sd["fc1.weight"].shape[1], manifest["config"]["probe"]["hidden"],
                  sd["fc3.weight"].shape[0])
    model.load_state_dict(sd)
    return model.eval()


def run_variants(data: Data, index: Path, only: set[str] | None, report: Callable[[str], None]
                 ) -> dict[str, Any]:
    """Every variant; ``report(line)`` is called as each finishes."""
    results: dict[str, Any] = {}
    static_ranks = knn_ranks(unit(data.e), unit(data.eq), data.q_rows)
    results["static_only"] = {"why": "ê alone (the current default, alpha = 0)", "dim": 384,
                              "methods": {"static_only": score_block(static_ranks, data.q_kinds)}}
    e, eq = data.e, data.eq
    cfg = ProbeConfig()
    yq = assign(eq, data.centroids)
    C = len(data.centroids)

    def add(name: str, why: str, cb, cq, **info):
        if only and name not in only:
            return
        t = time.perf_counter()
        results[name] = evaluate(Variant(name, why, cb, cq, info), data, static_ranks)
        ov = {m: b["overall"]["p@1"] for m, b in results[name]["methods"].items()}
        report(f"{name}: " + ", ".join(f"{m} {p:.3f}" for m, p in ov.items())
               + f" ({time.perf_counter() - t:.1f}s)")

    def want(*names: str) -> bool:
        return only is None or any(n in only for n in names)

    # 1. baseline: the index's own probe and projector
    probe = library_probe(index)
    kron = Kron.library(probe, 128)
    ce = hard_ce()
    cb = project_all(probe, e, data.labels, ce, kron)
    cq = project_all(probe, eq, yq, ce, kron)
    stored = np.load(index / "grad_proj.npy", allow_pickle=False).astype(np.float32)
    cos = float(np.mean(np.sum(unit(cb) * unit(stored), 1)))
    add("1_baseline", "current defaults: C=67, hidden 32, Kronecker m=128, wd 1e-3", cb, cq,
        mean_cos_vs_stored_grad_proj=cos, clusters=C,
        projection_fidelity=fidelity(probe, e, data.labels, ce, kron))
    base = (cb, cq)

    # 2. finer clusters
    for c_new in (256, 1024):
        name = f"2_clusters_{c_new}"
        if not want(name):
            continue
        t = time.perf_counter()
        cents = fit_centroids(e, LabelConfig(num_clusters=c_new))
        lab, labq = assign(e, cents), assign(eq, cents)
        model, rep = train_probe(e, lab, c_new, cfg)
        k = Kron.library(model, 128)
        add(name, "finer pseudo-labels make the residual and last-layer gradient more specific "
            "to a sample's neighbourhood", project_all(model, e, lab, ce, k),
            project_all(model, eq, labq, ce, k), probe_acc=rep.accuracy,
            train_s=time.perf_counter() - t)

    # 3. last layer only
    k3 = Kron.layers(probe, 128, (2,))
    add("3_last_layer", "δ₃ ⊗ a₂ is the residual times the penultimate features: the layer "
        "whose gradient is least smoothed by back-propagation",
        project_all(probe, e, data.labels, ce, k3), project_all(probe, eq, yq, ce, k3))

    # 4. per-layer normalisation
    kn = Kron.library(probe, 128)
    kn.per_layer_norm = True
    add("4_per_layer_norm", "the first layer's block (input-sized) can dominate |c|; unit blocks "
        "weigh the layers equally", project_all(probe, e, data.labels, ce, kn),
        project_all(probe, eq, yq, ce, kn))

    # 5. whitening
    for damp in (0.0, 0.1):
        wb, wq = whiten(*base, damp)
        add(f"5_whiten_d{damp:g}", "a few directions (the cluster-label axes) dominate ĉ·ĉ'; "
            "whitening (TRAK-style Fisher preconditioning) spreads weight over all directions",
            wb, wq)

    # 6. objectives that keep residuals informative
    for temp in (2.0, 5.0):
        obj = hard_ce(temp)
        add(f"6_grad_temperature_{temp:g}", "residual at temperature T: softmax(z/T) does not "
            "saturate, so δ keeps the sample's graded similarity to every class",
            project_all(probe, e, data.labels, obj, kron), project_all(probe, eq, yq, obj, kron))
    if want("6_label_smoothing_0.1"):
        model, _ = train_variant(e, data.labels, C, cfg, smoothed_loss(0.1))
        k = Kron.library(model, 128)
        obj = smoothed_ce(0.1)
        add("6_label_smoothing_0.1", "smoothed targets keep the converged residual away from 0 "
            "and spread over all classes", project_all(model, e, data.labels, obj, k),
            project_all(model, eq, yq, obj, k))
    for tau in (0.05,):
        name = f"6_soft_assignment_tau{tau:g}"
        if not want(name):
            continue
        model, _ = train_variant(e, data.labels, C, cfg, soft_loss(data.centroids, tau))
        k = Kron.library(model, 128)
        obj = soft_assignment(data.centroids, tau)
        add(name, "target = the sample's own soft assignment over centroids: the residual is "
            "what the probe fails to predict about this sample's position",
            project_all(model, e, data.labels, obj, k), project_all(model, eq, yq, obj, k))

    # 7. checkpoints (TracIn-style)
    if want("7_checkpoints"):
        model, snaps = train_variant(e, data.labels, C, cfg, ce_loss, checkpoints=(2, 10))
        blocks_b, blocks_q = [], []
        for mdl in (*snaps, model):
            k = Kron.library(mdl, 128)
            blocks_b.append(unit(project_all(mdl, e, data.labels, ce, k)))
            blocks_q.append(unit(project_all(mdl, eq, yq, ce, k)))
        add("7_final_own_trainer", "control: the checkpoint run's final probe alone",
            blocks_b[-1], blocks_q[-1])
        add("7_checkpoints", "early checkpoints have large, less saturated residuals; "
            "concatenating epochs 2, 10 and final is TracIn's sum over training",
            np.hstack(blocks_b), np.hstack(blocks_q))

    # 8. dense vs Kronecker, m
    for m in (64, 128, 256):
        if m != 128:
            k = Kron.library(probe, m)
            add(f"8_kron_m{m}", "projection dimension: does ĉ lose information at m=128?",
                project_all(probe, e, data.labels, ce, k), project_all(probe, eq, yq, ce, k),
                projection_fidelity=fidelity(probe, e, data.labels, ce, k))
        dn = Dense(probe.num_params, m)
        add(f"8_dense_m{m}", "dense Gaussian P mixes all layers' coordinates; Kronecker "
            "restricts P to a structured family", project_all(probe, e, data.labels, ce, dn),
            project_all(probe, eq, yq, ce, dn),
            projection_fidelity=fidelity(probe, e, data.labels, ce, dn))
    if want("8_exact_gradient"):
        add("8_exact_gradient", "no projection at all (p = 15,587 dims): the ceiling any "
            "projector can reach", project_all(probe, e, data.labels, ce, Exact()),
            project_all(probe, eq, yq, ce, Exact()))

    # 9. self-supervised: autoencoding probe
    if want("9_autoencoder"):
        d = e.shape[1]
        model, _ = train_variant(e, data.labels, d, cfg, mse_loss)
        k = Kron.library(model, 128)
        obj = reconstruction()
        add("9_autoencoder", "gradient of ½|f(e)−e|² for a d→32→32→d probe: the residual is "
            "the part of e off the learned low-dim manifold, i.e. what is specific to the sample",
            project_all(model, e, data.labels, obj, k), project_all(model, eq, yq, obj, k))
    return results


# -- report ------------------------------------------------------------------------------------


def markdown(results: dict[str, Any], n_by_kind: dict[str, int]) -> str:
    lines = ["Queries per kind: " + ", ".join(f"{k} {n}" for k, n in n_by_kind.items())
             + ". P@1 / MRR (MRR@100). +/−: queries this method gets right at rank 1 and "
             "static-only does not, and the reverse."]
    for set_name, kinds in SETS.items():
        cols = [k for k in kinds if n_by_kind.get(k)] + [set_name]
        if len(cols) == 1:
            continue
        lines += ["", f"### {set_name}", "",
                  "| variant | method | " + " | ".join(cols) + " | +/− vs static |",
                  "|" + "---|" * (3 + len(cols))]
        for name, r in results.items():
            for m, block in r["methods"].items():
                cells = [f"{block[k]['p@1']:.3f} / {block[k]['mrr']:.3f}" for k in cols]
                ov = block[set_name]
                wl = (f"+{ov['wins_vs_static']}/−{ov['losses_vs_static']}"
                      if "wins_vs_static" in ov else "")
                lines.append(f"| {name} | {m} | " + " | ".join(cells) + f" | {wl} |")
    lines += ["", "Variants:", ""]
    lines += [f"* **{name}** ({r['dim']} dims): {r['why']}" for name, r in results.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="indexes/wiki")
    ap.add_argument("--out", default="runs/gradient_signatures")
    ap.add_argument("--queries-only", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--no-hard", action="store_true", help="the briefed query set only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_data(Path(args.index), out, hard=not args.no_hard)
    n_by_kind = {k: int((data.q_kinds == k).sum()) for k in ALL_KINDS}
    print(f"data: {len(data.e)} corpus rows, {len(data.eq)} queries {n_by_kind} "
          f"({time.perf_counter() - t0:.1f}s)", flush=True)
    if args.queries_only:
        return 0
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    only = set(args.only.split(",")) if args.only else None
    with single_thread():
        results = run_variants(data, Path(args.index), only,
                               lambda line: print(f"[{time.perf_counter() - t0:6.1f}s] {line}",
                                                  flush=True))
    suffix = "" if only is None else "_partial"
    (out / f"results{suffix}.json").write_text(json.dumps(
        {"queries": {"kinds": list(KINDS), "hard_kinds": list(HARD_KINDS), "per_kind": N_PER_KIND, "seed": QUERY_SEED,
                     "counts": n_by_kind}, "alphas": list(ALPHAS), "results": results},
        indent=1))
    table = markdown(results, n_by_kind)
    (out / f"results{suffix}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
