"""Memorisation protocol: can GIF trace a fine-tuned model's recitation back to its source?

    python benchmarks/memorisation.py --index indexes/wiki --n 40 --out runs/memorisation

Picks ``n`` samples of the index (seeded, among those of ``--min-words``..``--max-words`` words,
short ones for speed), fully fine-tunes SmolLM2-135M-Instruct on them until it recites them
(gif_core.memorise), and asks it to continue each sample's first ``--prefix-words`` words. The
continuations (prefix excluded) are the queries; their true source is the sample the model was
trained on. Writes ``OUT/queries.jsonl``, evaluates every method with
``gif_core.evaluate.run_eval`` into ``OUT/eval`` (influence off), prints the P@1 / MRR table,
how much of each source the model reproduced, and timings, and writes all of it to
``OUT/memorisation.json``. The index is only read.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from gif_core.engine import Engine
from gif_core.evaluate import markdown_table, run_eval
from gif_core.memorise import DEFAULT_STOP_LOSS, memorised_queries
from gif_core.queries import write_queries
from gif_core.store import SampleStore


def pick_samples(index: Path, n: int, seed: int, min_words: int, max_words: int
                 ) -> list[tuple[str, str]]:
    """``n`` (id, text) pairs of the index with ``min_words``..``max_words`` words, chosen in a
    seeded random order."""
    store = SampleStore(index)
    try:
        pool = []
        for row in range(len(store)):
            rec = store.record(row)
            if min_words <= len(rec["text"].split()) <= max_words:
                pool.append((rec["id"], rec["text"]))
    finally:
        store.close()
    if len(pool) < n:
        raise SystemExit(f"only {len(pool)} samples have {min_words}-{max_words} words; "
                         f"lower --n or widen --min-words/--max-words")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[int(i)] for i in order[: n]]


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--n", type=int, default=40, help="samples to fine-tune on (= queries)")
    ap.add_argument("--out", default="runs/memorisation")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--stop-loss", type=float, default=DEFAULT_STOP_LOSS,
                    help="stop once an epoch's mean per-token training loss is below this")
    ap.add_argument("--prefix-words", type=int, default=12)
    ap.add_argument("--min-words", type=int, default=40)
    ap.add_argument("--max-words", type=int, default=90)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for fine-tuning and generation (1 is fastest on a "
                         "CPU shared with other jobs; 0 = torch's default)")
    ap.add_argument("--progress", action="store_true", help="tqdm bar over epochs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("gif_core.memorise").setLevel(logging.INFO)

    index, out = Path(args.index), Path(args.out)
    t_start = time.perf_counter()
    samples = pick_samples(index, args.n, args.seed, args.min_words, args.max_words)
    timings: dict[str, float] = {}
    queries = memorised_queries(
        samples, args.n, prefix_words=args.prefix_words, seed=args.seed, timings=timings,
        fine_tune_kwargs={"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                          "max_tokens": args.max_tokens, "stop_loss": args.stop_loss,
                          "device": args.device, "progress": args.progress,
                          "threads": args.threads or None})
    out.mkdir(parents=True, exist_ok=True)
    write_queries(out / "queries.jsonl", queries)

    t0 = time.perf_counter()
    engine = Engine.load(index)
    timings["engine_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = run_eval(engine, queries, out / "eval", influence=False)
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    # memorisation strength, and GIF's P@1 by strength
    ov = [q.meta["overlap"] for q in queries]
    recall = [o["rouge_l_recall"] for o in ov]
    strength = {
        "queries": len(queries),
        "rouge_l_recall": _stats(recall),
        "rouge_l_precision": _stats([o["rouge_l_precision"] for o in ov]),
        "longest_run_fraction": _stats([o["longest_run_fraction"] for o in ov]),
        "exact_prefix_words": _stats([float(o["exact_prefix_words"]) for o in ov]),
        "generated_words": _stats([float(o["generated_words"]) for o in ov]),
        "share_recall_ge_0.9": sum(r >= 0.9 for r in recall) / len(recall),
        "share_recall_ge_0.5": sum(r >= 0.5 for r in recall) / len(recall),
        "share_fully_recited": sum(o["exact_prefix_words"] == o["reference_words"]
                                   for o in ov) / len(ov),
        "epochs_run": queries[0].meta["epochs_run"],
        "final_loss": queries[0].meta["final_loss"],
    }
    rec_by_qid = {q.qid: q.meta["overlap"]["rouge_l_recall"] for q in queries}
    by_strength: dict[str, dict[str, dict[str, float]]] = {}
    with (out / "eval" / "rows.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            band = "recall>=0.9" if rec_by_qid[row["qid"]] >= 0.9 else "recall<0.9"
            hit = bool(row["ranked_ids"]) and row["ranked_ids"][0] in row["source_ids"]
            cell = by_strength.setdefault(row["method"], {}).setdefault(band, {"n": 0, "hits": 0})
            cell["n"] += 1
            cell["hits"] += hit

    table = markdown_table(metrics["methods"])
    report = {"index": str(index), "n": args.n, "settings": vars(args), "timings_s": timings,
              "memorisation": strength, "p_at_1_by_strength": by_strength,
              "methods": metrics["methods"], "table": table}
    (out / "memorisation.json").write_text(json.dumps(report, indent=2))

    print(table)
    print()
    s = strength
    print(f"memorisation ({s['queries']} queries, {s['epochs_run']} epochs, final loss "
          f"{s['final_loss']:.3f}): ROUGE-L recall mean {s['rouge_l_recall']['mean']:.3f} / "
          f"median {s['rouge_l_recall']['median']:.3f} / min {s['rouge_l_recall']['min']:.3f}; "
          f"recall>=0.9 {s['share_recall_ge_0.9']:.0%}, >=0.5 {s['share_recall_ge_0.5']:.0%}; "
          f"recited whole {s['share_fully_recited']:.0%}; longest shared run "
          f"{s['longest_run_fraction']['mean']:.3f} of the source on average")
    for method in ("gif", "bm25", "verbatim", "embedding_knn"):
        cells = by_strength.get(method, {})
        print(f"  P@1 {method:>13} by strength: " + ", ".join(
            f"{band} {c['hits']}/{c['n']}" for band, c in sorted(cells.items())))
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
