"""Attribution quality and latency on an index: every method side by side.

    python benchmarks/attribution.py indexes/wiki --n 300 --kinds word_drop --json runs/attr.json

Generates planted perturbed copies of the index's own samples (seeded, different seeds from the
ones the build used to fit the fusion ranker), ranks them with GIF and every ablation and
baseline (see gif_core.evaluate), times the full query path of the default engine by stage, and
prints a Markdown table plus the build figures from the manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from gif_core.engine import Engine
from gif_core.evaluate import compare_methods, markdown_table, summarize_methods
from gif_core.metrics import latency_summary
from gif_core.queries import generate_queries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--n", type=int, default=300, help="queries per kind")
    ap.add_argument("--kinds", default="word_drop")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--latency-queries", type=int, default=100)
    ap.add_argument("--no-influence", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    engine = Engine.load(args.index)
    samples = engine.samples.id_text_pairs()
    queries = generate_queries(samples, args.kinds.split(","), args.n, seed=args.seed)
    t0 = time.perf_counter()
    results = compare_methods(engine, queries, influence=not args.no_influence)
    summary = summarize_methods(results)
    eval_s = time.perf_counter() - t0

    # the full query path, model loaded, one query at a time
    timings = []
    rng = np.random.default_rng(args.seed)
    for qi in rng.choice(len(queries), size=min(args.latency_queries, len(queries)),
                         replace=False):
        att = engine.attribute(queries[int(qi)].text, k=10)
        timings.append(att.timings_ms)
    latency = latency_summary(timings)
    timings_noinf = [engine.attribute(queries[int(qi)].text, k=10, influence=False).timings_ms
                     for qi in rng.choice(len(queries), size=min(args.latency_queries,
                                                                 len(queries)), replace=False)]
    m = engine.manifest
    n = m["counts"]["samples"]
    report = {
        "index": args.index, "queries": len(queries), "kinds": args.kinds.split(","),
        "seed": args.seed, "eval_seconds": eval_s,
        "methods": summary,
        "latency_ms": latency,
        "latency_ms_without_influence": latency_summary(timings_noinf),
        "build_ms": m["build_ms"], "samples": n,
        "samples_per_s": n / (m["build_ms"]["total"] / 1000),
        "bytes_per_sample": m["bytes_on_disk"] / n,
        "manifest_counts": m["counts"],
    }
    print(markdown_table(summary))
    print()
    print("latency ms (full path, p50/p95): " + ", ".join(
        f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in latency.items()))
    print(f"build {m['build_ms']['total'] / 1000:.0f}s ({report['samples_per_s']:.1f} samples/s); "
          f"{report['bytes_per_sample']:.0f} bytes/sample on disk")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
