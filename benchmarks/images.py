"""Image provenance on the Debian image sets: perturbed copies, text → image, latency, throughput.

    python benchmarks/images.py --out runs/images [--others 5000] [--fashion 1000] [--n 200]

Builds one image index (default encoder: the shipped image tower) of every captioned Tux Paint
stamp, ``--others`` openclipart-png images (a seeded sample) and the first ``--fashion``
Fashion-MNIST photos, then measures

* P@1 and MRR of perturbed-copy queries (crop, resize, JPEG, rotation, noise; ``--n`` source
  images each, seeded, written as PNG files and read back like a user's upload), for the fused
  ranking and for two single channels: the fingerprint ANN alone and the perceptual hashes alone.
  An image whose exact bytes are indexed under several ids (some openclipart files are) counts
  as found under any of them; ``fused_same_hash_counts`` also accepts any image with the
  source's exact pHash and dHash, and ``fused_same_picture_counts`` any indexed image whose
  stored 64-pixel colour thumbnail equals the source's (under 1.5 grey levels apart on average:
  the same drawing saved again under another name, size or folder);
* text → image recall@10 for the captions of the held-out pairs the tower never trained on
  (:func:`gif_core.image_data.is_held_out`) that are in the index: fused (the captions are
  indexed, so BM25 sees them) and through the shared embedding space alone (ANN, no caption);
* latency p50/p95 of image queries by stage (decode, encode, ANN, pHash, fusion, influence),
  full pipeline with influence, over ``--latency`` queries;
* build throughput in images/s, with the build's stage times and the images skipped.

Writes ``OUT/images.json`` and prints a summary. The index is built in ``OUT/index``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from gif_core.config import BuildConfig
from gif_core.engine import Engine, ImageQuery, build_images, make_fingerprints
from gif_core.image_data import (
    ImageCorpus,
    fashion_mnist_corpus,
    is_held_out,
    openclipart_corpus,
    stamps_corpus,
)
from gif_core.image_queries import IMAGE_KINDS, generate_image_queries, perturb_image
from gif_core.images import decode_image
from gif_core.metrics import percentiles


def corpus(others: int, fashion: int, seed: int) -> ImageCorpus:
    stamps = stamps_corpus()
    clip = openclipart_corpus()
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(clip.sources), size=min(others, len(clip.sources)),
                                replace=False))
    sources = stamps.sources + [clip.sources[int(i)] for i in picked]
    if fashion:
        sources += fashion_mnist_corpus(fashion).sources
    return ImageCorpus(sources, stamps.problems)


def rank_of(ids: list[str], relevant: set[str]) -> int | None:
    for i, sid in enumerate(ids, 1):
        if sid in relevant:
            return i
    return None


def summarise(ranks: list[int | None]) -> dict[str, float]:
    return {"n": len(ranks), "p@1": float(np.mean([r == 1 for r in ranks])),
            "mrr": float(np.mean([1 / r if r else 0.0 for r in ranks])),
            "recall@10": float(np.mean([bool(r) and r <= 10 for r in ranks]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/images")
    ap.add_argument("--others", type=int, default=5000, help="openclipart images added")
    ap.add_argument("--fashion", type=int, default=1000, help="Fashion-MNIST photos added")
    ap.add_argument("--n", type=int, default=200, help="source images per perturbation kind")
    ap.add_argument("--latency", type=int, default=100, help="queries timed with influence")
    ap.add_argument("--nulls", type=int, default=200,
                    help="perturbed copies of openclipart images left out of the index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="reuse OUT/index if it exists")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index_dir = out / "index"

    report: dict = {"command": " ".join(["python benchmarks/images.py", f"--out {args.out}",
                                         f"--others {args.others}", f"--fashion {args.fashion}",
                                         f"--n {args.n}", f"--latency {args.latency}",
                                         f"--nulls {args.nulls}",
                                         f"--seed {args.seed}"])}
    data = corpus(args.others, args.fashion, args.seed)
    if not (args.reuse and (index_dir / "manifest.json").exists()):
        t0 = time.perf_counter()
        manifest = build_images(data, index_dir, BuildConfig(), corpus_name="debian image sets")
        wall = time.perf_counter() - t0
    else:
        manifest = json.loads((index_dir / "manifest.json").read_text())
        wall = manifest["build_ms"]["total"] / 1000
    im = manifest["images"]
    report["build"] = {"images_listed": im["listed"], "images_indexed": im["indexed"],
                       "captioned": im["captioned"], "skipped": im["skipped"],
                       "skipped_reasons": im["skipped_reasons"], "seconds": round(wall, 1),
                       "images_per_s": round(im["indexed"] / wall, 1),
                       "stage_s": {k: round(v / 1000, 1) for k, v in manifest["build_ms"].items()},
                       "bytes_per_image": round(manifest["bytes_on_disk"] / im["indexed"])}
    print(f"build: {im['indexed']:,} images ({im['skipped']} skipped: {im['skipped_reasons']}) "
          f"in {wall:.0f}s = {im['indexed'] / wall:.1f} images/s")

    engine = Engine.load(index_dir)
    ids = engine.samples.ids
    by_id = {s.id: s for s in data.sources}

    # perturbed copies: seeded sources among the indexed images
    rng = np.random.default_rng(args.seed + 1)
    picked = [ids[int(i)] for i in rng.choice(len(ids), size=min(args.n, len(ids)),
                                              replace=False)]
    images = [(sid, decode_image(by_id[sid].read()).image) for sid in picked]
    queries = generate_image_queries(images, IMAGE_KINDS, out / "queries", seed=args.seed)
    # the same bytes under several ids (openclipart files in two folders) all count as the source
    sha_of = {r["id"]: r["sha256"] for r in engine.samples.records()}
    ids_of_sha: dict[str, set[str]] = {}
    for sid, sha in sha_of.items():
        ids_of_sha.setdefault(sha, set()).add(sid)
    # looser: any indexed image with the source's exact pHash and dHash (the same drawing saved
    # twice at other sizes or in another file); a perturbed copy cannot tell these apart
    hash_of = {sid: (int(engine.perceptual.phash[r]), int(engine.perceptual.dhash[r]))
               for r, sid in enumerate(ids)}
    ids_of_hash: dict[tuple[int, int], set[str]] = {}
    for sid, h in hash_of.items():
        ids_of_hash.setdefault(h, set()).add(sid)
    row_of = {sid: r for r, sid in enumerate(ids)}

    def same_picture(a: str, b: str) -> bool:
        """The same drawing stored twice (other file, size or folder): equal-size colour
        thumbnails that differ by under 1.5 grey levels on average."""
        return engine.copies is not None and engine.copies.same_picture(row_of[a], row_of[b])

    fused_picture: dict[str, list] = {k: [] for k in IMAGE_KINDS}
    attributed: dict[str, list] = {k: [] for k in IMAGE_KINDS}
    fused_loose: dict[str, list] = {k: [] for k in IMAGE_KINDS}
    fused: dict[str, list] = {k: [] for k in IMAGE_KINDS}
    ann_only: dict[str, list] = {k: [] for k in IMAGE_KINDS}
    phash_only: dict[str, list] = {k: [] for k in IMAGE_KINDS}
    k_cand = engine.config.index.candidates
    fp = engine.config.fingerprint
    for q in queries:
        att = engine.attribute_image(q.image, k=10, influence=False)
        relevant = ids_of_sha[sha_of[q.source_ids[0]]]
        fused[q.kind].append(rank_of([r.id for r in att.results], relevant))
        loose = relevant | ids_of_hash[hash_of[q.source_ids[0]]]
        fused_loose[q.kind].append(rank_of([r.id for r in att.results], loose))
        same = relevant | {r.id for r in att.results if same_picture(q.source_ids[0], r.id)}
        fused_picture[q.kind].append(rank_of([r.id for r in att.results], same))
        attributed[q.kind].append(fused[q.kind][-1] == 1 and not att.abstained)
        iq = ImageQuery.from_source(q.image)
        e, _, c = engine.fingerprint_images([iq.image])
        _, ann = engine.faiss.search(make_fingerprints(e, c, fp.alpha, fp.embedding), 10)
        ann_only[q.kind].append(rank_of([ids[i] for i in ann[0] if i >= 0], relevant))
        _, near = engine.perceptual.search(iq.phash, iq.dhash, k_cand)
        phash_only[q.kind].append(rank_of([ids[i] for i in near[:10]], relevant))
    report["perturbed_copies"] = {
        "fused": {k: summarise(v) for k, v in fused.items()},
        "fused_same_hash_counts": {k: summarise(v) for k, v in fused_loose.items()},
        "fused_same_picture_counts": {k: summarise(v) for k, v in fused_picture.items()},
        "ann_only": {k: summarise(v) for k, v in ann_only.items()},
        "phash_only": {k: summarise(v) for k, v in phash_only.items()}}
    by_name = {"fused": fused, "fused_same_hash_counts": fused_loose,
               "fused_same_picture_counts": fused_picture, "ann_only": ann_only,
               "phash_only": phash_only}
    for name, ranks_by_kind in by_name.items():
        all_ranks = sum(ranks_by_kind.values(), [])
        report["perturbed_copies"][name]["overall"] = summarise(all_ranks)

    report["perturbed_copies"]["attributed"] = {
        k: round(float(np.mean(v)), 4) for k, v in attributed.items()}
    report["perturbed_copies"]["attributed"]["overall"] = round(
        float(np.mean(sum(attributed.values(), []))), 4)

    # no source in the index: perturbed copies of openclipart images left out of it, and blank
    # pictures; any attribution (not abstained) is a false one
    indexed = set(ids)
    clip = openclipart_corpus()
    outside = [s for s in clip.sources if s.id not in indexed]
    nrng = np.random.default_rng(args.seed + 2)
    null_false, null_n = 0, 0
    for j in nrng.permutation(len(outside))[: args.nulls]:
        try:
            decoded = decode_image(outside[int(j)].read())
        except Exception:  # noqa: BLE001 - an unreadable outsider is simply not used
            continue
        if decoded.sha256 in ids_of_sha:
            continue  # the same bytes are indexed under another folder's id
        image = decoded.image
        kind = IMAGE_KINDS[null_n % len(IMAGE_KINDS)]
        att = engine.attribute_image(perturb_image(image, kind, seed=int(j)), k=10,
                                     influence=False)
        null_false += int(not att.abstained)
        null_n += 1
    from PIL import Image

    blanks = [Image.new("RGB", (256, 256), c) for c in
              ((255, 255, 255), (0, 0, 0), (128, 128, 128), (200, 30, 30), (30, 200, 60))]
    blank_false = sum(int(not engine.attribute_image(b, k=10, influence=False).abstained)
                      for b in blanks)
    report["no_source"] = {"perturbed_copies_not_indexed": null_n,
                           "false_attribution": round(null_false / max(null_n, 1), 4),
                           "blank_pictures": len(blanks), "blank_attributed": blank_false}

    # text -> image on held-out captions
    held = [sid for sid in ids if is_held_out(sid) and by_id[sid].caption
            and not sid.startswith("fashion-mnist/")]
    same_caption: dict[str, set[str]] = {}
    for sid in ids:
        same_caption.setdefault(by_id[sid].caption, set()).add(sid)
    t2i_fused, t2i_ann = [], []
    captions = [by_id[sid].caption for sid in held]
    e_t, _, c_t = engine.fingerprint(captions)
    _, ann = engine.faiss.search(make_fingerprints(e_t, c_t, fp.alpha, fp.embedding), 10)
    for j, sid in enumerate(held):
        relevant = same_caption[by_id[sid].caption]
        att = engine.attribute(captions[j], k=10, influence=False, spans=False)
        t2i_fused.append(rank_of([r.id for r in att.results], relevant))
        t2i_ann.append(rank_of([ids[i] for i in ann[j] if i >= 0], relevant))
    stamp_rows = [j for j, sid in enumerate(held) if sid.startswith("stamps/")]
    report["text_to_image_held_out"] = {
        "fused": summarise(t2i_fused), "ann_only": summarise(t2i_ann),
        "ann_only_stamps": summarise([t2i_ann[j] for j in stamp_rows]),
        "fused_stamps": summarise([t2i_fused[j] for j in stamp_rows])}

    # latency of the full image query (decode from file ... influence)
    timings = []
    for q in queries[: args.latency]:
        timings.append(engine.attribute_image(q.image, k=10).timings_ms)
    stages = sorted({s for t in timings for s in t})
    report["latency_ms"] = {s: percentiles([t[s] for t in timings if s in t], (50, 95))
                            for s in stages}
    import os

    report["machine"] = (f"{os.cpu_count()} CPU cores; load average at the end "
                         f"{os.getloadavg()[0]:.1f} (other jobs share the machine)")
    (out / "images.json").write_text(json.dumps(report, indent=2))

    print("perturbed copies (fused P@1 / MRR; same-hash images counted; same pictures counted; "
          "ANN-only P@1; "
          "pHash-only P@1):")
    pc = report["perturbed_copies"]
    for kind in (*IMAGE_KINDS, "overall"):
        print(f"  {kind:>8}: {pc['fused'][kind]['p@1']:.3f} / {pc['fused'][kind]['mrr']:.3f};  "
              f"{pc['fused_same_hash_counts'][kind]['p@1']:.3f};  "
              f"{pc['fused_same_picture_counts'][kind]['p@1']:.3f};  "
              f"{pc['ann_only'][kind]['p@1']:.3f};  {pc['phash_only'][kind]['p@1']:.3f}")
    print(f"attributed (right source first, not abstained): {pc['attributed']}")
    ns = report["no_source"]
    print(f"no source: {ns['false_attribution']:.3f} of {ns['perturbed_copies_not_indexed']} "
          f"perturbed copies of images outside the index attributed; "
          f"{ns['blank_attributed']} of {ns['blank_pictures']} blank pictures")
    t2i = report["text_to_image_held_out"]
    print(f"text->image recall@10 on {len(held)} held-out captions: fused "
          f"{t2i['fused']['recall@10']:.3f}, shared space only {t2i['ann_only']['recall@10']:.3f}"
          f" (stamps: {t2i['ann_only_stamps']['recall@10']:.3f})")
    print("latency ms p50/p95: " + ", ".join(
        f"{s} {v['p50']:.1f}/{v['p95']:.1f}" for s, v in report["latency_ms"].items()))
    median = statistics.median(t["total"] for t in timings)
    print(f"wrote {out / 'images.json'}; median query {median:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
