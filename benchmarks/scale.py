"""Scale benchmark of the ANN channel: latency, recall against exact search, memory, disk.

    python benchmarks/scale.py --sizes 100000,1000000,10000000 --json scale.json \
        --real-index indexes/wiki --work /tmp/gif-scale

For each size N the fingerprint store holds the real fingerprints of an existing index (the
packaged Wikipedia summaries by default: embeddings and gradient projections the encoder and the
probe produced) and, beyond those, *synthetic* fingerprints drawn from a Gaussian mixture fitted
to them: spherical k-means means and one covariance shared by all components (tied), each draw
unit-normalised. The output says how many rows are real and how many synthetic.

Each size runs in two child processes so that peak RSS is measured per phase:

* build: write the float16 store in chunks, train the automatically chosen index (or
  ``--factory``) on a sample, add the chunks, write the index file;
* query: open the index memory-mapped, run the queries one at a time through
  :class:`gif_core.ann.FingerprintSearcher` (exact re-ranking from the store included, encoder
  excluded), and compare with an exact chunked scan of the same store.

Queries: half are real fingerprints with Gaussian noise added (cosine about 0.9 to their source,
a stand-in for a paraphrased output), half fresh draws from the mixture. Recall@k is
``|approximate top-k ∩ exact top-k| / k``.

``--channels`` measures the lexical and verbatim channels on *real* texts only (the synthetic
fingerprint rows have no text): every text of the packaged corpora (``--channel-corpora``,
Wikipedia summaries, WordNet glosses and fortunes by default) is written to a file, and each
build runs in its own child that streams it: the bounded-memory ``build_to`` on several shares
of the texts (``--channel-fractions``; above 1 the texts are read again, a larger corpus with the
same vocabulary; its peak should not grow with them) and the one-shot
in-memory ``build`` on all of them for reference. Reported per run: build time, peak RSS
(absolute and growth over the process before the build), bytes per sample on disk, anonymous
memory per sample once the index is opened, and the RAM the manifest would report.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib import format

CHUNK = 250_000
MIXTURE_COMPONENTS = 64


def rss_kinds() -> dict[str, int]:
    """Resident bytes of this process by kind (anonymous memory, file-backed pages)."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def real_fingerprints(index_dir: Path) -> tuple[np.ndarray, dict]:
    from gif_core.engine import make_fingerprints

    manifest = json.loads((index_dir / "manifest.json").read_text())
    # only the fingerprint settings are read, so an index of another GIF version serves too
    fp = manifest["config"].get("fingerprint", {})
    alpha, embedding = float(fp.get("alpha", 0.0)), bool(fp.get("embedding", True))
    e = np.load(index_dir / "embeddings.npy", mmap_mode="r")
    c = np.load(index_dir / "grad_proj.npy", mmap_mode="r")
    xr = make_fingerprints(np.asarray(e, np.float32), np.asarray(c, np.float32), alpha,
                           embedding)
    return xr, {"index": str(index_dir), "corpus": manifest.get("corpus"), "rows": len(xr),
                "alpha": alpha}


class Mixture:
    """Tied-covariance Gaussian mixture fitted to unit rows; draws are unit-normalised."""

    def __init__(self, x: np.ndarray, components: int, seed: int):
        import faiss

        n, d = x.shape
        km = faiss.Kmeans(d, components, niter=25, seed=seed, spherical=False, verbose=False)
        km.train(x)
        _, assign = km.index.search(x, 1)
        assign = assign[:, 0]
        self.means = km.centroids.astype(np.float64)
        self.weights = np.bincount(assign, minlength=components) / n
        resid = x - self.means[assign]
        cov = resid.T @ resid / n
        self.chol = np.linalg.cholesky(cov + 1e-6 * np.eye(d))

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        # float32 draws: half the memory and twice the speed of float64 at 10^7 rows
        z = rng.standard_normal((n, self.chol.shape[0]), dtype=np.float32)
        x = self.means[comp].astype(np.float32) + z @ self.chol.T.astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def nn_cosine(x: np.ndarray, sample: int, rng: np.random.Generator) -> float:
    """Mean cosine of a row to its nearest other row, over a sample (a spread statistic)."""
    take = x[rng.choice(len(x), size=min(sample, len(x)), replace=False)]
    sims = take @ take.T
    np.fill_diagonal(sims, -1)
    return float(sims.max(1).mean())


def read_rows(path: Path, start: int, stop: int, d: int) -> np.ndarray:
    """Rows [start, stop) of a float16 .npy store as float32, read without a memory map."""
    with path.open("rb") as fh:
        format.read_magic(fh)
        format.read_array_header_1_0(fh)
        fh.seek(start * d * 2, 1)
        return np.fromfile(fh, dtype=np.float16, count=(stop - start) * d).reshape(
            -1, d).astype(np.float32)


def stage_build(args) -> dict:
    import faiss

    from gif_core import ann

    n, work = args.n, Path(args.work)
    rng = np.random.default_rng(args.seed)
    xr, real_info = real_fingerprints(Path(args.real_index))
    n_real = min(n, len(xr))
    d = xr.shape[1]
    mixture = Mixture(xr, MIXTURE_COMPONENTS, args.seed)
    path = work / "store.npy"
    t0 = time.perf_counter()
    # plain file writes, not a memory map: mapped pages would count in this process's RSS
    with path.open("wb") as fh:
        format.write_array_header_1_0(fh, {"descr": format.dtype_to_descr(np.dtype(np.float16)),
                                           "fortran_order": False, "shape": (n, d)})
        fh.write(np.ascontiguousarray(xr[:n_real], np.float16).tobytes())
        for start in range(n_real, n, CHUNK):
            stop = min(n, start + CHUNK)
            fh.write(mixture.draw(stop - start, rng).astype(np.float16).tobytes())
    t_store = time.perf_counter() - t0
    phases = {"after_store": rss_kinds()}
    synth_sample = mixture.draw(len(xr), np.random.default_rng(args.seed + 1))
    stats = {"nn_cosine_real": nn_cosine(xr, 2000, rng),
             "nn_cosine_synthetic": nn_cosine(synth_sample, 2000, rng),
             "mean_norm_real": float(np.linalg.norm(xr.mean(0))),
             "mean_norm_synthetic": float(np.linalg.norm(synth_sample.mean(0)))}
    del synth_sample

    factory = args.factory if args.factory != "auto" else ann.choose_factory(n, d)
    index = ann.new_index(d, factory)
    t1 = time.perf_counter()
    rows = ann.train_sample_rows(n, args.seed)
    # read chunk by chunk without a memory map: fancy indexing a mapped store faults in (and
    # counts in RSS) pages around every sampled row, most of the file at 10^7 rows
    xt = np.concatenate([read_rows(path, a, min(n, a + CHUNK), d)[
        rows[(rows >= a) & (rows < a + CHUNK)] - a] for a in range(0, n, CHUNK)])
    ann.train(index, xt)
    phases["after_train"] = rss_kinds()
    del xt
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    add_max = {"RssAnon": 0, "RssFile": 0}

    def track(_ntotal: int) -> None:
        for key, value in rss_kinds().items():
            add_max[key] = max(add_max[key], value)

    ann.add_chunks(index, (read_rows(path, s, min(n, s + CHUNK), d) for s in range(0, n, CHUNK)),
                   progress=track)
    phases["add_max"] = add_max
    t_add = time.perf_counter() - t2
    faiss.write_index(index, str(work / "index.faiss"))
    t_index = time.perf_counter() - t1
    return {"n": n, "real_rows": n_real, "synthetic_rows": n - n_real, "d": d,
            "real_source": real_info, "synthetic_model": (
                f"tied-covariance Gaussian mixture, {MIXTURE_COMPONENTS} components fitted to "
                f"the real fingerprints, draws unit-normalised"),
            "distribution_check": stats, "factory": factory,
            "seconds": {"store": round(t_store, 2), "train": round(t_train, 2),
                        "add": round(t_add, 2), "index_total": round(t_index, 2)},
            "index_build_samples_per_s": round(n / t_index, 1),
            "build_peak_rss_bytes": peak_rss(),
            "build_rss_by_phase": phases,
            "disk_bytes": {"index": (work / "index.faiss").stat().st_size,
                           "store_float16": path.stat().st_size}}


def exact_topk(store: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k rows by inner product, scanning the store in chunks (the reference)."""
    nq = len(xq)
    best_d = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    for start in range(0, len(store), CHUNK):
        xb = np.asarray(store[start:start + CHUNK], np.float32)
        sims = xq @ xb.T  # (nq, chunk)
        part = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        cand_d = np.concatenate([best_d, np.take_along_axis(sims, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + start], 1)
        keep = np.argsort(-cand_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cand_d, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    return best_i


def stage_query(args) -> dict:
    from gif_core import ann

    n, work, k = args.n, Path(args.work), args.k
    rng = np.random.default_rng(args.seed + 7)
    store = np.load(work / "store.npy", mmap_mode="r")
    d = store.shape[1]
    xr, _ = real_fingerprints(Path(args.real_index))
    n_real = min(n, len(xr))
    # queries: noisy real fingerprints, then fresh mixture draws
    half = args.queries // 2
    src = rng.choice(n_real, size=half, replace=False)
    noisy = xr[src] + rng.standard_normal((half, d)).astype(np.float32) * (0.5 / np.sqrt(d))
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    fresh = Mixture(xr, MIXTURE_COMPONENTS, args.seed).draw(args.queries - half, rng)
    xq = np.ascontiguousarray(np.vstack([noisy, fresh]), np.float32)
    del xr

    before = rss_kinds()
    t0 = time.perf_counter()
    index = ann.read_index(str(work / "index.faiss"), mmap=True)
    t_open = time.perf_counter() - t0

    def exact_rows(rows: np.ndarray) -> np.ndarray:
        return np.asarray(store[rows], np.float32)

    settings = []
    truth = None
    for nprobe in [int(x) for x in str(args.nprobe).split(",")]:
        for rerank in [int(x) for x in str(args.rerank).split(",")]:
            searcher = ann.FingerprintSearcher(index, exact_rows,
                                               ann.SearchParams(args.ef_search, nprobe),
                                               rerank=rerank)
            for q in xq[:10]:  # warm-up: thread pools, first page faults of the quantiser
                searcher.search(q[None], k)
            lat, found = [], []
            for q in xq:
                t = time.perf_counter()
                _, ids = searcher.search(q[None], k)
                lat.append((time.perf_counter() - t) * 1000)
                found.append(ids[0])
            after = rss_kinds()
            if truth is None:
                t1 = time.perf_counter()
                truth = exact_topk(store, xq, k)
                t_exact = time.perf_counter() - t1
            recall = np.array([len(set(f.tolist()) & set(t.tolist())) / k
                               for f, t in zip(found, truth, strict=True)])
            top1 = float(np.mean([f[0] == t[0] for f, t in zip(found, truth, strict=True)]))
            settings.append({
                "nprobe": searcher.nprobe, "rerank": searcher.rerank,
                "latency_ms": {"p50": float(np.percentile(lat, 50)),
                               "p95": float(np.percentile(lat, 95)),
                               "max": float(np.max(lat))},
                f"recall_at_{k}": float(recall.mean()),
                f"recall_at_{k}_noisy_real": float(recall[:half].mean()),
                f"recall_at_{k}_synthetic": float(recall[half:].mean()),
                "top1_agreement": top1})
    anon = after["RssAnon"] - before["RssAnon"]
    return {"queries": len(xq), "k": k, "ef_search": args.ef_search, **settings[0],
            "settings": settings,
            "open_seconds": round(t_open, 3), "exact_scan_seconds": round(t_exact, 1),
            "ram": {"index_structures_bytes": ann.ram_bytes(index),
                    "index_structures_bytes_per_sample": ann.ram_bytes(index) / n,
                    "rss_anon_delta_bytes": anon, "rss_anon_delta_per_sample": anon / n,
                    "rss_file_delta_bytes": after["RssFile"] - before["RssFile"]},
            "query_peak_rss_bytes": peak_rss()}


def current_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def write_channel_texts(corpora: str, path: Path) -> dict:
    """Every text of the packaged corpora, one JSON string per line (the channel children stream
    it, so the texts themselves never sit in their memory)."""
    from gif_core.data import packaged_corpus

    counts = {}
    with path.open("w", encoding="utf-8") as fh:
        for name in [c.strip() for c in corpora.split(",") if c.strip()]:
            samples = packaged_corpus(name)
            counts[f"pkg:{name}"] = len(samples)
            for sample in samples:
                fh.write(json.dumps(sample.text) + "\n")
    return counts


def stage_channels(args) -> dict:
    """One lexical or verbatim build over the first ``--fraction`` of the real texts: time, peak
    memory (absolute and growth over the process before the build), bytes per sample on disk,
    anonymous memory once opened. ``--mode stream`` is the bounded-memory build
    (``build_to``, texts streamed from the file), ``oneshot`` the in-memory ``build`` (texts in a
    list, which the growth does not count)."""
    import bm25s  # noqa: F401  (imported before the baseline: not a cost of the build)

    from gif_core.lexical import LexicalIndex
    from gif_core.lexical import nbytes_on_disk as lexical_bytes
    from gif_core.normalize import tokenize
    from gif_core.verbatim import VerbatimIndex
    from gif_core.verbatim import nbytes_on_disk as verbatim_bytes

    work = Path(args.work)
    text_file = work / "texts.jsonl"
    with text_file.open(encoding="utf-8") as fh:
        total = sum(1 for _ in fh)
    n = max(1, int(round(total * args.fraction)))

    def stream():
        i = 0
        while True:  # a share above 1 reads the texts again (a larger corpus, same vocabulary)
            with text_file.open(encoding="utf-8") as fh:
                for line in fh:
                    if i >= n:
                        return
                    i += 1
                    yield json.loads(line)

    cls, size = {"lexical": (LexicalIndex, lexical_bytes),
                 "verbatim": (VerbatimIndex, verbatim_bytes)}[args.channel]
    folder = work / f"{args.channel}-{args.mode}-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    texts = list(stream()) if args.mode == "oneshot" else None
    first = next(stream())
    tokenize(first)  # warm the tokeniser's tables
    rss0 = current_rss()
    t0 = time.perf_counter()
    if texts is not None:
        cls.build(texts).save(folder)
    else:
        cls.build_to(folder, stream())
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    after_build = rss_kinds()
    disk = size(folder)
    base = rss_kinds()["RssAnon"]
    opened = cls.load(folder)
    opened.search(first[:500], 100)  # a query touches a few postings pages only
    anon = rss_kinds()["RssAnon"] - base
    out = {"channel": args.channel, "mode": args.mode, "fraction": args.fraction, "samples": n,
           "build_seconds": round(seconds, 2), "build_samples_per_s": round(n / seconds, 1),
           "build_peak_rss_bytes": peak, "rss_before_build_bytes": rss0,
           "build_peak_rss_growth_bytes": max(0, peak - rss0),
           "rss_after_build": after_build,
           "disk_bytes": disk, "disk_bytes_per_sample": disk / n,
           "open_rss_anon_bytes_per_sample": anon / n}
    if args.channel == "lexical":
        from gif_core.engine import VOCAB_ENTRY_BYTES  # after the measurements: it loads torch

        terms = len(opened._vocab)
        out["vocabulary_terms"] = terms
        # what the manifest's bytes_per_sample reports as the channel's RAM
        out["ram_estimate_bytes_per_sample"] = terms * VOCAB_ENTRY_BYTES / n
    else:
        out["ram_estimate_bytes_per_sample"] = 0.0
    del opened
    shutil.rmtree(folder, ignore_errors=True)
    return out


def measure_channels(args) -> dict:
    """Lexical and verbatim channels on the real texts of the packaged corpora (see
    :func:`stage_channels`); the streaming build at several corpus fractions shows whether its
    peak memory grows with the corpus, the one-shot build on all texts is the reference."""
    work = Path(args.work) / "channels"
    work.mkdir(parents=True, exist_ok=True)
    counts = write_channel_texts(args.channel_corpora, work / "texts.jsonl")
    out = {"texts": {"corpora": counts, "total": sum(counts.values()),
                     "bytes": (work / "texts.jsonl").stat().st_size},
           "note": ("the synthetic fingerprint rows of the ANN sizes have no text; the lexical "
                    "and verbatim channels are measured on these real texts only"),
           "runs": []}
    fractions = [float(f) for f in args.channel_fractions.split(",") if f.strip()]
    for channel in ("lexical", "verbatim"):
        # one child per run: peak RSS only ever grows within a process
        for mode, fraction in [("stream", f) for f in fractions] + [("oneshot", 1.0)]:
            args.channel, args.mode, args.fraction = channel, mode, fraction
            got = run_child("channels", 0, args, work)
            out["runs"].append(got)
            print(f"channels: {channel} {mode} {got['samples']} texts: "
                  f"{got['build_seconds']} s, peak RSS {got['build_peak_rss_bytes'] / 1e6:.0f} MB "
                  f"(+{got['build_peak_rss_growth_bytes'] / 1e6:.0f} MB), disk "
                  f"{got['disk_bytes_per_sample']:.0f} B/sample", file=sys.stderr)
    full = {(r["channel"], r["mode"]): r for r in out["runs"]
            if r["samples"] == out["texts"]["total"]}
    out["summary"] = {
        ch: {"disk_bytes_per_sample": round(full[(ch, "stream")]["disk_bytes_per_sample"], 1),
             "ram_bytes_per_sample": round(full[(ch, "stream")]["ram_estimate_bytes_per_sample"],
                                           1),
             "open_rss_anon_bytes_per_sample": round(
                 full[(ch, "stream")]["open_rss_anon_bytes_per_sample"], 1),
             "build_peak_rss_bytes": full[(ch, "stream")]["build_peak_rss_bytes"],
             "build_peak_rss_growth_bytes": full[(ch, "stream")]["build_peak_rss_growth_bytes"],
             "oneshot_build_peak_rss_growth_bytes": full[(ch, "oneshot")][
                 "build_peak_rss_growth_bytes"],
             "stream_build_peak_rss_growth_bytes_by_samples": {
                 r["samples"]: r["build_peak_rss_growth_bytes"] for r in out["runs"]
                 if r["channel"] == ch and r["mode"] == "stream"}}
        for ch in ("lexical", "verbatim") if (ch, "stream") in full and (ch, "oneshot") in full}
    shutil.rmtree(work, ignore_errors=True)
    return out


def run_child(stage: str, n: int, args, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--n", str(n), "--work", str(work),
           "--real-index", args.real_index, "--factory", args.factory, "--nprobe",
           str(args.nprobe), "--ef-search", str(args.ef_search), "--rerank", str(args.rerank),
           "--queries", str(args.queries), "-k", str(args.k), "--seed", str(args.seed),
           "--channel", args.channel, "--mode", args.mode, "--fraction", str(args.fraction)]
    # the children import gif_core from this checkout, not from wherever it is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} at N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--real-index", default="indexes/wiki",
                   help="index whose real fingerprints seed the store and the mixture")
    p.add_argument("--work", default="/tmp/gif-scale", help="scratch folder (removed per size "
                                                             "unless --keep)")
    p.add_argument("--factory", default="auto")
    p.add_argument("--nprobe", default="0", help="0: automatic (an eighth of the lists); a "
                                                  "comma list measures each (first = headline)")
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--rerank", default="60", help="candidates per result re-ranked exactly; a "
                                                  "comma list measures each")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--channels", action="store_true",
                   help="also measure the lexical and verbatim channels on the real texts of "
                        "--channel-corpora (the synthetic rows have no text)")
    p.add_argument("--channel-corpora", default="wiki,wordnet,fortunes",
                   help="packaged corpora whose texts the channels are built from")
    p.add_argument("--channel-fractions", default="0.25,1,8",
                   help="shares of those texts the streaming build is measured on (above 1: "
                        "the texts are read that many times over)")
    p.add_argument("--stage", choices=["build", "query", "channels"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--channel", default="lexical", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.stage:
        out = {"build": stage_build, "query": stage_query,
               "channels": stage_channels}[args.stage](args)
        print(json.dumps(out))
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = {"machine": {"cpus": os.cpu_count(),
                           "loadavg_start": list(os.getloadavg())},
               "sizes": []}
    if args.channels:
        results["channels"] = measure_channels(args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    for n in sizes:
        work = Path(args.work) / f"n{n}"
        work.mkdir(parents=True, exist_ok=True)
        need = n * (2 * 512 + 80)
        free = shutil.disk_usage(work).free
        if need > free:
            print(f"N={n}: needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free; skipped. "
                  f"Point --work at a larger disk.", file=sys.stderr)
            results["sizes"].append({"n": n, "skipped": "not enough disk"})
            continue
        t0 = time.perf_counter()
        built = run_child("build", n, args, work)
        print(f"N={n}: built {built['factory']} in {built['seconds']['index_total']}s",
              file=sys.stderr)
        queried = run_child("query", n, args, work)
        row = {**built, **queried, "wall_seconds": round(time.perf_counter() - t0, 1)}
        row["disk_bytes_per_sample"] = {k: v / n for k, v in built["disk_bytes"].items()}
        results["sizes"].append(row)
        print(f"N={n}: p50 {queried['latency_ms']['p50']:.1f} ms, p95 "
              f"{queried['latency_ms']['p95']:.1f} ms, recall@{args.k} "
              f"{queried[f'recall_at_{args.k}']:.3f}, RAM/sample "
              f"{queried['ram']['index_structures_bytes_per_sample']:.2f} B, build peak RSS "
              f"{built['build_peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            results["machine"]["loadavg_end"] = list(os.getloadavg())
            Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
