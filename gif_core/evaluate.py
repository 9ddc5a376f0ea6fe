"""Side-by-side evaluation of GIF's ranking, its ablations and the plain baselines.

Every method ranks the same queries in the same process:

* ``bm25`` — the lexical channel alone; ``verbatim`` — the shingle channel alone;
* ``embedding_knn`` — exact k-NN on the frozen embeddings ê (the plain semantic baseline; it is
  also GIF's static-only fingerprint);
* ``gradient_only`` — exact k-NN on the projected gradients ĉ (the index's m);
  ``gradient_only_m{m}`` — the same with the gradients projected again to other sizes m;
* ``combined_a{α}`` — exact k-NN on ``[ê ; α·ĉ]``;
* ``combined_a{α}+influence`` / ``+influence_norm`` — that method's top-K re-ranked by raw
  support ``-I`` or by normalised influence;
* ``gif`` — the default ranking (all channels fused);
* ``gif+influence`` — the fused top-K re-ranked by fused score + ``w``·normalised influence.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine, library_versions, make_fingerprints
from .metrics import summarize
from .queries import Query, write_queries
from .store import Timer

log = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.25, 0.5, 1.0)


def _exact_knn(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
    return ids


def _project_all(engine: Engine, dim: int, e_q: np.ndarray, lab_q: np.ndarray,
                 chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of every indexed row and of the queries, projected to ``dim`` (same kind and
    seed as the index's projection)."""
    import torch

    from .projection import make_projector
    from .threads import single_thread

    cfg = dataclasses.replace(engine.config.projection, dim=dim)
    proj = make_projector(engine.probe, cfg)
    n = len(engine)
    out = np.empty((n, proj.dim), dtype=np.float32)
    with torch.no_grad(), single_thread():
        for s in range(0, n, chunk):
            e = torch.from_numpy(np.asarray(engine.embeddings[s:s + chunk], dtype=np.float32))
            y = torch.from_numpy(np.asarray(engine.labels[s:s + chunk], dtype=np.int64))
            out[s:s + chunk] = proj.project(engine.probe, e, y).numpy()
        q = proj.project(engine.probe, torch.from_numpy(e_q), torch.from_numpy(lab_q)).numpy()
    return out, q


def compare_methods(engine: Engine, queries: Sequence[Query], *, k: int = 10,
                    alphas: Sequence[float] = DEFAULT_ALPHAS, influence: bool = True,
                    influence_weight: float = 1.0, proj_dims: Sequence[int] = (),
                    progress: Callable[[str, int, int], None] | None = None
                    ) -> dict[str, list[dict[str, Any]]]:
    """Rank every query with every method.

    ``proj_dims`` adds gradient-only ablations at other projection sizes m (each projects every
    indexed row's gradient again: seconds per thousand rows).

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
    for m in proj_dims:
        if m == c_b.shape[1]:
            continue
        c_bm, c_qm = _project_all(engine, m, e_q, lab_q)
        ranked[f"gradient_only_m{m}"] = _exact_knn(
            make_fingerprints(e_b, c_bm, 0.0, embedding=False),
            make_fingerprints(e_q, c_qm, 0.0, embedding=False), k_cand).tolist()
    for a in alphas:
        ranked[f"combined_a{a:g}"] = _exact_knn(make_fingerprints(e_b, c_b, a),
                                                make_fingerprints(e_q, c_q, a), k_cand).tolist()
    ranked["bm25"] = [engine.lexical.search(t, k_cand)[1].tolist() for t in texts]
    ranked["verbatim"] = [engine.verbatim.search(t, k_cand)[1].tolist() for t in texts]

    ranked["gif"], timings["gif"] = [], []
    abstained: list[bool] = []
    if influence:
        for name in [f"combined_a{alphas[0]:g}+influence", f"combined_a{alphas[0]:g}+influence_norm",
                     "gif+influence"]:
            ranked[name] = []
    base = f"combined_a{alphas[0]:g}"
    for i, text in enumerate(texts):
        timer = Timer()
        t_start = time.perf_counter()
        fp = (e_q[i:i + 1], lab_q[i:i + 1], c_q[i:i + 1])
        cand = engine.candidates(text, timer, k_cand, fingerprint=fp)
        with timer.stage("rank"):
            scores = engine.ranker.score(cand.features)
            order = np.argsort(-scores, kind="stable")
        ms = dict(timer.ms)
        ms["encode"] = encode_ms
        ms["total"] = (time.perf_counter() - t_start) * 1000 + encode_ms - timer.ms["encode"]
        ranked["gif"].append(cand.rows[order].tolist())
        timings["gif"].append(ms)
        abstained.append(engine.ranker.confidence(scores, cand.features)
                         < engine.ranker.threshold)
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
                   "abstained": bool(abstained[j]) if method == "gif" else False}
            if method in timings:
                row["timings_ms"] = timings[method][j]
            rows_out.append(row)
        out[method] = rows_out
    return out


def summarize_methods(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {method: summarize(rows) for method, rows in results.items()}


def markdown_table(summary: dict[str, Any], metric_keys: Sequence[str] = ("p@1", "mrr")) -> str:
    """Methods × query kinds table of P@1 / MRR, with abstention on in-corpus queries and false
    attribution on out-of-corpus ones (only the default ranking abstains)."""
    kinds = sorted(k for k in {k for s in summary.values() for k in s["per_kind"]}
                   if any("p@1" in s["per_kind"].get(k, {}) for s in summary.values()))

    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    head = ("| method | " + " | ".join(f"{k} {m}" for k in kinds + ["overall"]
                                       for m in metric_keys)
            + " | abstained (in corpus) | false attribution (out of corpus) |")
    lines = [head, "|" + "---|" * (3 + (len(kinds) + 1) * len(metric_keys))]
    for method, s in summary.items():
        cells = []
        for kind in kinds + ["overall"]:
            block = s["overall"] if kind == "overall" else s["per_kind"].get(kind, {})
            cells += [fmt(block.get(m)) for m in metric_keys]
        cells += [fmt(s["overall"].get("abstention_rate")),
                  fmt(s["overall"].get("false_attribution_rate"))]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


METRICS_SCHEMA_VERSION = 1


def planted_queries(engine: Engine, kinds: Sequence[str], n: int, seed: int = 0) -> list[Query]:
    """Queries of the given kinds planted from the index's own samples (``n`` per kind);
    ``out_of_corpus`` draws held-out fortunes quotes that are not in the index."""
    from .data import fortunes_samples
    from .queries import generate_out_of_corpus, generate_queries

    planted = [k for k in kinds if k != "out_of_corpus"]
    queries = (generate_queries(engine.samples.id_text_pairs(), planted, int(n), seed=seed)
               if planted else [])
    if "out_of_corpus" in kinds:
        known = {r["sha256"] for r in engine.samples.records()}
        held_out = [s.text for s in fortunes_samples() if s.sha256 not in known]
        queries += generate_out_of_corpus(held_out, int(n), seed=seed)
    return queries


def check_queries(engine: Engine, queries: Sequence[Query]) -> None:
    """Refuse queries the index cannot serve: unknown source ids, image queries on text."""
    from .errors import InputError

    if not queries:
        raise InputError("the query set is empty. Give a --queries file with at least one line, "
                         "or --generate KINDS.")
    modality = engine.manifest.get("modality", "text")
    if modality != "text":
        raise InputError(f"`gif eval` compares methods on text indexes; this index holds "
                         f"{modality}s. Measure image indexes with `python benchmarks/images.py`.")
    unknown: list[str] = []
    for q in queries:
        if q.image is not None and modality == "text":
            raise InputError(f"query {q.qid!r} is an image query, but this index holds "
                             f"{modality}. Query an image index, or give a text query.")
        unknown += [sid for sid in q.source_ids if engine.samples.row_of(sid) is None]
    if unknown:
        raise InputError(f"{len(unknown)} source id(s) are not in the index, e.g. "
                         f"{unknown[:3]}. Fix the query file's source_ids, or use the index the "
                         f"queries were written for.")
    removed = set(np.asarray(getattr(engine, "removed", ()), dtype=np.int64).tolist())
    taken_down = sorted({sid for q in queries for sid in q.source_ids
                         if engine.samples.row_of(sid) in removed})
    if taken_down:
        raise InputError(f"{len(taken_down)} source id(s) were removed from the index (`gif "
                         f"remove`), e.g. {taken_down[:3]}; no method can return them. Drop "
                         f"those queries, or evaluate on the index before the takedown.")


def run_eval(engine: Engine, queries: Sequence[Query], out: str | Path, *,
             influence: bool = True, proj_dims: Sequence[int] = (), png: bool = True,
             progress=None) -> dict[str, Any]:
    """Evaluate every method on ``queries`` and write a results folder atomically.

    The folder holds ``metrics.json`` (schema: ``gif_core/schemas/metrics.schema.json``),
    ``summary.md``, ``queries.jsonl`` (the query set, re-usable with ``--queries``),
    ``rows.jsonl`` (one ranked list per method and query) and plotly figures as
    HTML and, when a Chrome/Chromium is available to kaleido, PNG. A failure leaves no folder
    behind (and an existing one untouched).
    """
    import json

    from .store import atomic_directory

    check_queries(engine, queries)
    t0 = time.perf_counter()
    results = compare_methods(engine, queries, influence=influence, proj_dims=proj_dims,
                              progress=progress)
    summary = summarize_methods(results)
    metrics = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "index": str(engine.directory), "index_manifest_sha256": engine.manifest_sha256,
        "n_queries": len(queries), "kinds": sorted({q.kind for q in queries}),
        "methods": summary, "default_method": "gif",
        "seconds": time.perf_counter() - t0, "versions": library_versions(),
        "resources": resources(engine),
    }
    with atomic_directory(out) as tmp:
        (tmp / "summary.md").write_text(
            f"# GIF evaluation on {engine.directory}\n\n{len(queries)} queries, kinds: "
            f"{', '.join(metrics['kinds'])}\n\n## P@1 and MRR\n\n{markdown_table(summary)}\n")
        # the queries themselves, so that an expensive set (LM paraphrases) can be scored again
        write_queries(tmp / "queries.jsonl", queries)
        with (tmp / "rows.jsonl").open("w") as fh:
            for method, rows in results.items():
                for r in rows:
                    fh.write(json.dumps({"method": method, **r}) + "\n")
        written: dict[str, Any] = {"html": [], "png": []}
        figs = figures(summary, results)
        for name, fig in figs.items():
            fig.write_html(str(tmp / f"{name}.html"), include_plotlyjs="cdn")
            written["html"].append(f"{name}.html")
        if png:
            try:
                write_pngs(figs, tmp)
                written["png"] = [f"{name}.png" for name in figs]
            except Exception as exc:  # the HTML figures and the numbers still stand
                written["png_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                log.warning("PNG figures skipped (%s); HTML figures written",
                            written["png_error"])
        metrics["figures"] = written
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def resources(engine: Engine) -> dict[str, Any]:
    """Peak memory of this process, the index's bytes on disk and per sample, its build time."""
    import resource

    from .store import dir_bytes

    n = max(1, len(engine))
    disk = dir_bytes(engine.directory)
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "index_bytes_on_disk": int(disk), "bytes_per_sample": round(disk / n, 1),
            "samples": len(engine), "build_ms": engine.manifest.get("build_ms", {})}


def chrome_path() -> str | None:
    """A Chrome/Chromium for kaleido: ``BROWSER_PATH`` if set, else Debian's chromium."""
    for cand in (os.environ.get("BROWSER_PATH"), shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and os.path.exists(cand):
            return cand
    return None


def write_pngs(figs: dict[str, Any], folder: Path, width: int = 900, height: int = 500) -> None:
    """Render figures to PNG with kaleido through a local Chrome/Chromium (never downloaded)."""
    import plotly.io as pio

    browser = chrome_path()
    if browser is None:
        raise RuntimeError("no Chrome/Chromium found for PNG export; install Debian's "
                           "`chromium` or set BROWSER_PATH")
    os.environ.setdefault("BROWSER_PATH", browser)
    for name, fig in figs.items():
        pio.write_image(fig, str(folder / f"{name}.png"), width=width, height=height)


def figures(summary: dict[str, Any], results: dict[str, list[dict[str, Any]]] | None = None
            ) -> dict[str, Any]:
    """Plotly figures: P@k per method, P@1 per kind and method, GIF latency by stage and, with
    the per-query ``results``, a histogram of GIF's total query latency."""
    import plotly.graph_objects as go

    ks = sorted(int(k[2:]) for k in next(iter(summary.values()))["overall"]
                if k.startswith("p@") and k[2:].isdigit())
    p_at_k = go.Figure()
    for method, s in summary.items():
        p_at_k.add_trace(go.Scatter(x=ks, y=[s["overall"].get(f"p@{k}") for k in ks],
                                    mode="lines+markers", name=method))
    p_at_k.update_layout(title="precision@k", xaxis_title="k", yaxis_title="P@k")
    kinds = sorted({k for s in summary.values() for k in s["per_kind"]})
    per_kind = go.Figure()
    for method, s in summary.items():
        per_kind.add_trace(go.Bar(x=kinds, y=[s["per_kind"].get(k, {}).get("p@1")
                                              for k in kinds], name=method))
    per_kind.update_layout(title="P@1 per query kind", barmode="group")
    lat = summary.get("gif", {}).get("latency_ms", {})
    latency = go.Figure(go.Bar(x=list(lat), y=[v.get("p50") for v in lat.values()], name="p50"))
    latency.add_trace(go.Bar(x=list(lat), y=[v.get("p95") for v in lat.values()], name="p95"))
    latency.update_layout(title="GIF query latency by stage (ms)", barmode="group")
    figs = {"p_at_k": p_at_k, "per_kind": per_kind, "latency": latency}
    totals = [r["timings_ms"]["total"] for r in (results or {}).get("gif", [])
              if "total" in r.get("timings_ms", {})]
    if totals:
        hist = go.Figure(go.Histogram(x=totals, nbinsx=40, name="total"))
        hist.update_layout(title="GIF query latency, total per query (ms)", xaxis_title="ms",
                           yaxis_title="queries")
        figs["latency_hist"] = hist
    return figs
