"""Side-by-side evaluation of GIF's ranking, its ablations and the plain baselines.

Every method ranks the same queries in the same process:

* ``bm25`` — the lexical channel alone; ``verbatim`` — the shingle channel alone;
* ``embedding_knn`` — exact k-NN on the frozen embeddings ê (the plain semantic baseline; it is
  also GIF's static-only fingerprint);
* ``gradient_only`` — exact k-NN on the projected gradients ĉ;
* ``combined_a{α}`` — exact k-NN on ``[ê ; α·ĉ]``;
* ``combined_a{α}+influence`` / ``+influence_norm`` — that method's top-K re-ranked by raw
  support ``-I`` or by normalised influence;
* ``gif`` — the default ranking (all channels fused);
* ``gif+influence`` — the fused top-K re-ranked by fused score + ``w``·normalised influence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .engine import Engine, make_fingerprints
from .metrics import summarize
from .queries import Query
from .store import Timer

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.25, 0.5, 1.0)


def _exact_knn(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
    return ids


def compare_methods(engine: Engine, queries: Sequence[Query], *, k: int = 10,
                    alphas: Sequence[float] = DEFAULT_ALPHAS, influence: bool = True,
                    influence_weight: float = 1.0,
                    progress: Callable[[str, int, int], None] | None = None
                    ) -> dict[str, list[dict[str, Any]]]:
    """Rank every query with every method.

    Returns:
        ``{method: [row, ...]}`` with rows as :func:`gif_core.metrics.summarize` expects.
    """
    progress = progress or (lambda *a: None)
    texts = [q.text for q in queries]
    ids = engine.samples.ids
    k_cand = engine.config.index.candidates
    t0 = time.perf_counter()
    e_q, lab_q, c_q = engine.fingerprint(texts)
    encode_ms = (time.perf_counter() - t0) * 1000 / max(1, len(texts))
    e_b = np.asarray(engine.embeddings, dtype=np.float32)
    c_b = np.asarray(engine.grad_proj, dtype=np.float32)

    ranked: dict[str, list[list[int]]] = {}
    timings: dict[str, list[dict[str, float]]] = {}

    ranked["embedding_knn"] = _exact_knn(make_fingerprints(e_b, c_b, 0.0),
                                         make_fingerprints(e_q, c_q, 0.0), k_cand).tolist()
    ranked["gradient_only"] = _exact_knn(make_fingerprints(e_b, c_b, 0.0, embedding=False),
                                         make_fingerprints(e_q, c_q, 0.0, embedding=False),
                                         k_cand).tolist()
    for a in alphas:
        ranked[f"combined_a{a:g}"] = _exact_knn(make_fingerprints(e_b, c_b, a),
                                                make_fingerprints(e_q, c_q, a), k_cand).tolist()
    ranked["bm25"] = [engine.lexical.search(t, k_cand)[1].tolist() for t in texts]
    ranked["verbatim"] = [engine.verbatim.search(t, k_cand)[1].tolist() for t in texts]

    ranked["gif"], timings["gif"] = [], []
    if influence:
        for name in [f"combined_a{alphas[0]:g}+influence", f"combined_a{alphas[0]:g}+influence_norm",
                     "gif+influence"]:
            ranked[name] = []
    base = f"combined_a{alphas[0]:g}"
    for i, text in enumerate(texts):
        timer = Timer()
        t_start = time.perf_counter()
        fp = (e_q[i:i + 1], lab_q[i:i + 1], c_q[i:i + 1])
        cand = engine._candidates(text, timer, k_cand, fingerprint=fp)
        with timer.stage("rank"):
            scores = engine.ranker.score(cand.features)
            order = np.argsort(-scores, kind="stable")
        ms = dict(timer.ms)
        ms["encode"] = encode_ms
        ms["total"] = (time.perf_counter() - t_start) * 1000 + encode_ms - timer.ms["encode"]
        ranked["gif"].append(cand.rows[order].tolist())
        timings["gif"].append(ms)
        if influence:
            rows = np.asarray(ranked[base][i], dtype=np.int64)
            raw, norm, _ = engine.influence_for(e_q[i], int(lab_q[i]), rows)
            # support = -I: larger means the sample lowered the query's loss more
            ranked[f"{base}+influence"].append(rows[np.argsort(raw, kind="stable")].tolist())
            ranked[f"{base}+influence_norm"].append(rows[np.argsort(-norm, kind="stable")].tolist())
            top = cand.rows[order[:k_cand]]
            _, norm_f, _ = engine.influence_for(e_q[i], int(lab_q[i]), top)
            fused = scores[order[:k_cand]] + influence_weight * norm_f
            ranked["gif+influence"].append(top[np.argsort(-fused, kind="stable")].tolist())
        progress("queries", i + 1, len(texts))

    out: dict[str, list[dict[str, Any]]] = {}
    for method, lists in ranked.items():
        rows_out = []
        for j, (q, rl) in enumerate(zip(queries, lists, strict=True)):
            row = {"qid": q.qid, "kind": q.kind, "source_ids": list(q.source_ids),
                   "ranked_ids": [ids[r] for r in rl[:max(k, 10)] if r >= 0],
                   "abstained": False}
            if method in timings:
                row["timings_ms"] = timings[method][j]
            rows_out.append(row)
        out[method] = rows_out
    return out


def summarize_methods(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {method: summarize(rows) for method, rows in results.items()}


def markdown_table(summary: dict[str, Any], metric_keys: Sequence[str] = ("p@1", "mrr")) -> str:
    """Methods × query kinds table of P@1 / MRR."""
    kinds = sorted({k for s in summary.values() for k in s["per_kind"]})
    head = "| method | " + " | ".join(f"{k} {m}" for k in kinds + ["overall"]
                                     for m in metric_keys) + " |"
    lines = [head, "|" + "---|" * (1 + (len(kinds) + 1) * len(metric_keys))]
    for method, s in summary.items():
        cells = []
        for kind in kinds + ["overall"]:
            block = s["overall"] if kind == "overall" else s["per_kind"].get(kind, {})
            for m in metric_keys:
                v = block.get(m)
                cells.append("–" if v is None else f"{v:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
