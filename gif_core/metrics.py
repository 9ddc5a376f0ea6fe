"""Retrieval metrics for planted-provenance evaluation.

A ranked list of training-sample ids is scored against the set of ids the query was made from.
:func:`summarize` turns per-query result rows into overall and per-kind numbers, the
false-attribution rate on out-of-corpus queries, and latency percentiles per pipeline stage.

Conventions
-----------
* Ranks are 1-based. Duplicate ids in a ranking count once, at their first position.
* ``precision_at_k`` divides by ``k`` even when fewer than ``k`` ids were returned.
* A query that abstained is scored as if it returned nothing (precision, recall and reciprocal
  rank 0), whatever its ``ranked_ids`` hold: the user was shown no attribution.
* A row with empty ``source_ids`` is out-of-corpus: it counts only towards
  ``false_attribution_rate`` (the fraction of such rows that did *not* abstain).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from gif_core.errors import InputError

__all__ = [
    "latency_summary",
    "percentile",
    "percentiles",
    "precision_at_k",
    "rank_of_first_relevant",
    "recall_at_k",
    "reciprocal_rank",
    "summarize",
]


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return k


def _relevant_set(relevant: Iterable[str]) -> set[str]:
    rel = set(relevant)
    if not rel:
        raise InputError(
            "relevant is empty: precision/recall need at least one relevant id; score "
            "out-of-corpus queries with summarize() (false_attribution_rate) instead"
        )
    return rel


def _unique_prefix(ranked_ids: Sequence[str], k: int | None = None) -> list[str]:
    """The distinct ids among the first ``k`` positions, in order."""
    seen: set[str] = set()
    out = []
    for rid in ranked_ids if k is None else ranked_ids[:k]:
        if rid not in seen:
            seen.add(rid)
            out.append(rid)
    return out


def rank_of_first_relevant(ranked_ids: Sequence[str], relevant: Iterable[str]) -> int | None:
    """1-based position of the first relevant id in ``ranked_ids``, or None if none is there."""
    rel = set(relevant)
    for pos, rid in enumerate(ranked_ids, start=1):
        if rid in rel:
            return pos
    return None


def precision_at_k(ranked_ids: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Fraction of the top ``k`` positions holding a relevant id: ``hits / k``."""
    k = _check_k(k)
    rel = _relevant_set(relevant)
    return sum(1 for rid in _unique_prefix(ranked_ids, k) if rid in rel) / k


def recall_at_k(ranked_ids: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Fraction of the relevant ids found in the top ``k``: ``hits / len(relevant)``."""
    k = _check_k(k)
    rel = _relevant_set(relevant)
    return sum(1 for rid in _unique_prefix(ranked_ids, k) if rid in rel) / len(rel)


def reciprocal_rank(ranked_ids: Sequence[str], relevant: Iterable[str]) -> float:
    """``1 / rank_of_first_relevant``, or 0.0 if no relevant id was returned."""
    rank = rank_of_first_relevant(ranked_ids, _relevant_set(relevant))
    return 0.0 if rank is None else 1.0 / rank


# --------------------------------------------------------------------------------------------
# Percentiles
# --------------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks.

    Matches ``numpy.percentile(values, q)`` (method ``"linear"``): with sorted values
    ``v[0..n-1]`` the result is ``v`` interpolated at position ``(n - 1) * q / 100``.
    Returns None for no values.
    """
    if not 0 <= q <= 100 or isinstance(q, bool):
        raise InputError(f"percentile q must be between 0 and 100, got {q!r}")
    vals = sorted(float(v) for v in values)
    if not vals:
        return None
    if any(math.isnan(v) for v in vals):
        raise InputError("percentile: values contain NaN; drop or fix the NaN timings first")
    pos = (len(vals) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    frac = pos - lo
    return vals[lo] + (vals[hi] - vals[lo]) * frac


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, Any]:
    """``{"p50": ..., "p95": ..., "p99": ..., "mean": ...}`` of ``values`` (None when empty)."""
    vals = [float(v) for v in values]
    out: dict[str, Any] = {f"p{q:g}": percentile(vals, q) for q in qs}
    out["mean"] = sum(vals) / len(vals) if vals else None
    return out


def latency_summary(timings: Iterable[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per-stage ``percentiles`` over per-query ``{stage: milliseconds}`` dicts.

    Stages are reported in first-seen order; a query that lacks a stage simply does not
    contribute to it. Each stage also reports ``n``, the number of queries that timed it.
    """
    per_stage: dict[str, list[float]] = {}
    for t in timings:
        for stage, ms in t.items():
            if isinstance(ms, bool) or not isinstance(ms, (int, float)):
                raise InputError(
                    f"timing for stage {stage!r} must be a number of milliseconds, got {ms!r}"
                )
            per_stage.setdefault(stage, []).append(float(ms))
    return {stage: {"n": len(v), **percentiles(v)} for stage, v in per_stage.items()}


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


def _check_row(i: int, row: Any) -> None:
    if not isinstance(row, dict):
        raise InputError(f"rows[{i}] must be a dict, got {type(row).__name__}")
    for key in ("qid", "kind", "ranked_ids", "source_ids"):
        if key not in row:
            raise InputError(
                f"rows[{i}] is missing {key!r}; each row needs qid, kind, ranked_ids, "
                "source_ids (and optionally abstained, timings_ms)"
            )
    for key in ("ranked_ids", "source_ids"):
        if not isinstance(row[key], (list, tuple)):
            raise InputError(
                f"rows[{i}] ({row['qid']!r}): {key!r} must be a list of ids, "
                f"got {type(row[key]).__name__}"
            )
    if "timings_ms" in row and not isinstance(row["timings_ms"], dict):
        raise InputError(f"rows[{i}] ({row['qid']!r}): 'timings_ms' must be a dict stage -> ms")


def _in_corpus_block(rows: list[dict], ks: Sequence[int]) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        for k in ks:
            out[f"p@{k}"] = None
        for k in ks:
            out[f"r@{k}"] = None
        out["mrr"] = None
        out["abstention_rate"] = None
        out["p@1_ranking"] = None
        out["mrr_ranking"] = None
        return out
    scored = [([] if r.get("abstained", False) else r["ranked_ids"], r["source_ids"]) for r in rows]
    for k in ks:
        out[f"p@{k}"] = sum(precision_at_k(rk, src, k) for rk, src in scored) / n
    for k in ks:
        out[f"r@{k}"] = sum(recall_at_k(rk, src, k) for rk, src in scored) / n
    out["mrr"] = sum(reciprocal_rank(rk, src) for rk, src in scored) / n
    out["abstention_rate"] = sum(1 for r in rows if r.get("abstained", False)) / n
    # the ranking alone, abstentions ignored: comparable with methods that never abstain
    out["p@1_ranking"] = sum(precision_at_k(r["ranked_ids"], r["source_ids"], 1)
                             for r in rows) / n
    out["mrr_ranking"] = sum(reciprocal_rank(r["ranked_ids"], r["source_ids"]) for r in rows) / n
    return out


def _ooc_block(rows: list[dict]) -> dict[str, Any]:
    n = len(rows)
    abstained = sum(1 for r in rows if r.get("abstained", False))
    return {
        "n": n,
        "abstention_rate": abstained / n if n else None,
        "false_attribution_rate": (n - abstained) / n if n else None,
    }


def summarize(rows: list[dict], ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Aggregate per-query result rows.

    Each row is ``{"qid", "kind", "ranked_ids": [...], "source_ids": [...], "abstained": bool,
    "timings_ms": {stage: ms}}`` (``abstained`` defaults to False, ``timings_ms`` is optional).

    Returns::

        {"overall":  {"n", "p@k"..., "r@k"..., "mrr", "abstention_rate",
                      "n_out_of_corpus", "false_attribution_rate"},
         "per_kind": {kind: same keys as overall for in-corpus kinds, or
                      {"n", "abstention_rate", "false_attribution_rate"} for a kind
                      whose rows are all out-of-corpus},
         "latency_ms": {stage: {"n", "p50", "p95", "p99", "mean"}}}

    ``overall`` metrics are means over in-corpus rows (non-empty ``source_ids``); rates and
    means over zero rows are None. Latency covers every row, in-corpus or not.
    """
    ks = tuple(_check_k(k) for k in ks)
    if not ks:
        raise InputError("ks is empty; pass cut-offs such as (1, 5, 10)")
    rows = list(rows)
    qids: set[str] = set()
    for i, row in enumerate(rows):
        _check_row(i, row)
        if row["qid"] in qids:
            raise InputError(f"rows[{i}]: duplicate qid {row['qid']!r}; score each query once")
        qids.add(row["qid"])

    in_corpus = [r for r in rows if r["source_ids"]]
    ooc = [r for r in rows if not r["source_ids"]]
    overall = _in_corpus_block(in_corpus, ks)
    ooc_block = _ooc_block(ooc)
    overall["n_out_of_corpus"] = ooc_block["n"]
    overall["false_attribution_rate"] = ooc_block["false_attribution_rate"]

    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(str(r["kind"]), []).append(r)
    per_kind: dict[str, Any] = {}
    for kind, krows in by_kind.items():
        kin = [r for r in krows if r["source_ids"]]
        kout = [r for r in krows if not r["source_ids"]]
        if kin:
            block = _in_corpus_block(kin, ks)
            if kout:
                kb = _ooc_block(kout)
                block["n_out_of_corpus"] = kb["n"]
                block["false_attribution_rate"] = kb["false_attribution_rate"]
            per_kind[kind] = block
        else:
            per_kind[kind] = _ooc_block(kout)

    return {
        "overall": overall,
        "per_kind": per_kind,
        "latency_ms": latency_summary(r.get("timings_ms") or {} for r in rows),
    }
