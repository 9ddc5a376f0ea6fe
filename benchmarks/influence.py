"""Influence refinement: is it right (LDS, leave-one-out vs retraining) and how fast is it?

    python benchmarks/influence.py indexes/wiki --json runs/influence.json

Three parts, one JSON:

* ``check`` — :func:`gif_core.influence_check.check_index`: a seeded 2,000-row subsample of the
  index, a check probe (the index's probe config, hidden width 16 so that the explicit solve is
  cheap), queries (half word_drop copies of subsample rows, half index rows outside it); per
  solver LDS (M random 50 % subsets, warm-start float64 L-BFGS retraining), leave-one-out Spearman
  on the top-20 rows of 3 queries, seconds per query, LiSSA/CG error against the explicit solve,
  and TRAK (``traker``, CPU) on the same probe and rows.
* ``timing`` — :func:`gif_core.influence_check.time_refinement`: ms per query for influence on
  100 candidates with the index's own probe (hidden 32, all rows), one intra-op thread.
* ``counterfactual`` — :func:`gif_core.counterfactual.counterfactual` on a few planted queries:
  the query's loss after retraining without its top-k results, against random-k controls.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gif_core.config import InfluenceConfig
from gif_core.counterfactual import counterfactual
from gif_core.engine import Engine
from gif_core.influence_check import CheckConfig, check_index, time_refinement
from gif_core.queries import perturb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("--json", required=True, help="output file")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--subsets", type=int, default=32)
    ap.add_argument("--train-rows", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--counterfactuals", type=int, default=3)
    ap.add_argument("--depth", type=int, default=0, help="LiSSA terms (default: the index's)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="LiSSA rows per product (default: the index's)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    engine = Engine.load(args.index)
    out: dict = {"index": args.index}
    cfg = CheckConfig(train_rows=args.train_rows, queries=args.queries, subsets=args.subsets,
                      hidden=args.hidden)
    icfg = engine.config.influence
    icfg = InfluenceConfig(**{**asdict(icfg), **({"depth": args.depth} if args.depth else {}),
                              **({"batch_size": args.batch_size} if args.batch_size else {})})
    engine.config.influence = icfg
    out["check"] = check_index(args.index, cfg, engine=engine, influence=icfg)
    out["timing"] = time_refinement(engine, ("ekfac", "lissa", "cg", "preconditioned",
                                             "preconditioned_fisher"))
    rng = np.random.default_rng(7)
    cfs = []
    for i, row in enumerate(rng.choice(len(engine), args.counterfactuals, replace=False)):
        text = perturb(engine.samples.text(int(row)), "word_drop", seed=100 + i)
        cf = counterfactual(engine, text, k=10)
        cf["source_row"] = int(row)
        cf["source_removed"] = int(row) in [r["row"] for r in cf["removed"]]
        cfs.append(cf)
    out["counterfactual"] = cfs
    out["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    summary = {k: {kk: v.get(kk) for kk in ("lds", "loo_spearman", "seconds", "rel_err_vs_exact")
                   if kk in v} for k, v in out["check"]["solvers"].items()}
    print(json.dumps({"check": summary, "timing": out["timing"],
                      "counterfactual": [{k: c[k] for k in ("effect", "control_effect_mean",
                                                            "control_effect_std",
                                                            "source_removed")}
                                         for c in cfs]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
