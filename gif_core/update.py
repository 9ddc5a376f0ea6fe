"""Incremental updates of an index: ``gif add`` appends samples, ``gif remove`` takes them down.

Both write a new version of the index folder next to it and swap it in atomically
(:func:`gif_core.store.atomic_directory`); files that do not change are hard-linked, not copied.
Each update increments the manifest's ``index_version`` and appends an entry to its ``changes``
log (what was added or removed, when); attributions and evidence record the version they used.

Add
    New samples are encoded, labelled with the existing centroids and projected with the
    existing probe, appended to every store and added to the ANN index (an IVF index keeps its
    trained centroids and codebooks). The lexical and verbatim channels are rebuilt over all
    texts, since BM25's idf and the verbatim stop list depend on the whole corpus. The probe and
    the fusion ranker are not refitted: run ``gif build`` again when the corpus has changed much,
    or ``gif refit-ranker``.

Remove (takedown)
    The rows go into ``removed.npy``, which every channel honours (the ANN search excludes them
    inside FAISS, the lexical and verbatim hits are filtered), and their text is deleted from
    ``samples.jsonl`` (id and content hash stay, so the change log and old evidence can name
    them). Derived data (fingerprints, postings) stay on disk until the next full build but are
    never returned. The probe is not retrained, so influence is still that of the probe trained
    with the removed samples (its Hessian sample keeps them); rebuild to drop them from it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from numpy.lib.format import open_memmap
from safetensors.torch import save_file

from .data import Sample
from .encoders import TextEncoder
from .engine import (
    HVP_SAMPLE,
    REMOVED,
    Engine,
    Progress,
    _noop,
    channel_bytes,
    make_fingerprints,
)
from .errors import InputError
from .influence import EKFAC, HessianOperator
from .lexical import LexicalIndex
from .pipeline import ChunkWorker, check_disk, chunk_bounds, estimate_bytes, sample_rows
from .store import (
    MANIFEST,
    SampleStore,
    atomic_directory,
    dir_bytes,
    file_sizes,
    read_manifest,
    write_json_atomic,
    write_records,
)
from .verbatim import VerbatimIndex

log = logging.getLogger(__name__)

CHANGE_IDS_LISTED = 1000
"""Sample ids written into one change-log entry of an add; beyond, the row range says which."""
_SHOWN = 5


def _link_tree(src: Path, dst: Path, skip: set[str]) -> None:
    """Hard-link every file of ``src`` into ``dst`` except the relative paths in ``skip``.

    Index files are never modified in place (every write makes a new file and renames it), so a
    link shared by two versions cannot change under either."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if not path.is_file() or rel in skip or rel == MANIFEST:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _finish(tmp: Path, manifest: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    version = int(manifest.get("index_version", 1)) + 1
    manifest["index_version"] = version
    manifest.setdefault("changes", []).append({"version": version, "unix": time.time(),
                                               **change})
    manifest["bytes_on_disk"] = dir_bytes(tmp)
    manifest["bytes_per_sample"] = channel_bytes(tmp, manifest)
    manifest["files"] = file_sizes(tmp)
    write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _append_samples(src: Path, dst: Path, samples: Sequence[Sample]) -> None:
    shutil.copyfile(src / "samples.jsonl", dst / "samples.jsonl")
    offsets = [int(x) for x in np.load(src / "sample_offsets.npy", allow_pickle=False)]
    with (dst / "samples.jsonl").open("ab") as fh:
        write_records(fh, samples, offsets)
    np.save(dst / "sample_offsets.npy", np.asarray(offsets, dtype=np.int64))


def add_samples(directory: str | Path, samples: Sequence[Sample], *,
                encoder: TextEncoder | None = None, progress: Progress | None = None,
                corpus_name: str = "") -> dict[str, Any]:
    """Append samples to an index (every channel); returns the new manifest.

    Raises:
        InputError: no samples, an id given twice, or an id the index already holds (nothing is
            changed then).
    """
    progress = progress or _noop
    directory = Path(directory)
    engine = Engine(directory, encoder=encoder)
    if engine.modality != "text":
        raise InputError(f"index {str(directory)!r} holds {engine.modality}s; `gif add` appends "
                         f"texts. Rebuild the image index with the new images included.")
    if not samples:
        raise InputError("the corpus to add is empty. Give a corpus with at least one sample.")
    ids = [s.id for s in samples]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise InputError(f"the corpus to add repeats the id {dup[0]!r}. Ids must be unique; "
                         f"nothing was changed.")
    clash = [i for i in ids if engine.samples.row_of(i) is not None]
    if clash:
        raise InputError(f"{len(clash)} id(s) to add are already in the index, e.g. "
                         f"{', '.join(repr(c) for c in clash[:_SHOWN])}. Give new ids (a removed "
                         f"sample's id stays taken); nothing was changed.")
    n_old, n_new = len(engine), len(samples)
    n = n_old + n_new
    cfg = engine.config
    check_disk(directory, dir_bytes(directory) + estimate_bytes(
        n_new, sum(len(s.text) for s in samples), engine.embeddings.shape[1],
        engine.grad_proj.shape[1]), f"adding {n_new:,} samples")

    worker = ChunkWorker(cfg.encoder, engine.encoder)
    state = {k: v.detach().numpy() for k, v in engine.probe.state_dict().items()}
    worker.set_probe(state, engine.embeddings.shape[1], len(engine.centroids), cfg.probe,
                     cfg.projection, engine.centroids)
    fp = cfg.fingerprint
    index = faiss.read_index(str(directory / "fingerprints.faiss"))  # in RAM: it is written anew
    with atomic_directory(directory) as tmp:
        _link_tree(directory, tmp, {"embeddings.npy", "grad_proj.npy", "labels.npy",
                                    "samples.jsonl", "sample_offsets.npy", "fingerprints.faiss"}
                   | {f"lexical/{p.name}" for p in (directory / "lexical").iterdir()}
                   | {f"verbatim/{p.name}" for p in (directory / "verbatim").iterdir()})
        old = {"embeddings.npy": engine.embeddings, "grad_proj.npy": engine.grad_proj,
               "labels.npy": engine.labels}
        new = {name: open_memmap(tmp / name, mode="w+", dtype=arr.dtype,
                                 shape=(n, *arr.shape[1:])) for name, arr in old.items()}
        for a, b in chunk_bounds(n_old, cfg.chunk_size):
            for name, arr in old.items():
                new[name][a:b] = arr[a:b]
        chunks = chunk_bounds(n_new, cfg.chunk_size)
        for j, (a, b) in enumerate(chunks):
            e = worker.encode([s.text for s in samples[a:b]])
            labels, c = worker.fingerprint(e)
            rows = slice(n_old + a, n_old + b)
            new["embeddings.npy"][rows] = e
            new["grad_proj.npy"][rows] = c
            new["labels.npy"][rows] = labels
            index.add(make_fingerprints(e, c, fp.alpha, fp.embedding))
            progress("add", j + 1, len(chunks))
        for arr in new.values():
            arr.flush()
        del new
        faiss.write_index(index, str(tmp / "fingerprints.faiss"))
        _append_samples(directory, tmp, samples)

        # BM25 idf and the verbatim stop list depend on the whole corpus: rebuilt over all texts,
        # streamed from the merged sample store in bounded memory
        merged = SampleStore(tmp)
        (tmp / "lexical").mkdir(exist_ok=True)
        (tmp / "verbatim").mkdir(exist_ok=True)
        for name, cls in (("lexical", LexicalIndex), ("verbatim", VerbatimIndex)):
            progress(name, 0, 1)
            cls.build_to(tmp / name, (r["text"] for r in merged.records()))
            progress(name, 1, 1)
        merged.close()

        # the new rows change the curvature, and with it the scale LiSSA needs to converge
        e_all = np.load(tmp / "embeddings.npy", mmap_mode="r")
        y_all = np.load(tmp / "labels.npy", mmap_mode="r")
        rows = sample_rows(n, HVP_SAMPLE, 0)
        op = HessianOperator(engine.probe, torch.from_numpy(np.asarray(e_all[rows], np.float32)),
                             torch.from_numpy(np.asarray(y_all[rows], np.int64)),
                             cfg.probe.weight_decay, cfg.influence.damping,
                             cfg.influence.curvature)
        lam_max = op.top_eigenvalue(iters=20)
        # the EK-FAC factors are taken over the grown corpus too (the hard link is replaced)
        ekfac = EKFAC(engine.probe, torch.from_numpy(np.asarray(e_all[rows], np.float32)),
                      cfg.probe.weight_decay, cfg.influence.damping)
        (tmp / "ekfac.safetensors").unlink(missing_ok=True)
        save_file(ekfac.state_dict(), str(tmp / "ekfac.safetensors"))
        (tmp / "ekfac.safetensors").chmod(0o644)
        del e_all, y_all
        manifest = dict(engine.manifest)
        manifest["influence"] = {"lambda_max": lam_max,
                                 "scale": 1.1 * (lam_max + cfg.influence.damping)}
        manifest["counts"] = {**manifest["counts"], "samples": n}
        listed = ids[:CHANGE_IDS_LISTED]
        manifest = _finish(tmp, manifest, {
            "action": "add", "samples": n_new, "rows": [n_old, n], "corpus": corpus_name,
            "ids": listed, "ids_truncated": len(ids) > len(listed)})
    log.info("added %d samples to %s (version %d)", n_new, directory, manifest["index_version"])
    return manifest


def remove_samples(directory: str | Path, ids: Sequence[str]) -> dict[str, Any]:
    """Take samples down by id: no channel returns them again; returns the new manifest.

    Raises:
        InputError: no ids, an id not in the index, or one already removed (nothing is changed).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    ids = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if not ids:
        raise InputError("no sample ids given. Pass --ids ID[,ID...] or --ids-file FILE.")
    store = SampleStore(directory)
    try:
        rows = {i: store.row_of(i) for i in ids}
        unknown = [i for i, r in rows.items() if r is None]
        if unknown:
            raise InputError(
                f"{len(unknown)} of the {len(ids)} id(s) are not in {str(directory)!r}: "
                f"{', '.join(repr(u) for u in unknown[:_SHOWN])}"
                f"{' …' if len(unknown) > _SHOWN else ''}. Check the ids (`gif query --json` "
                f"shows them); nothing was changed.")
        removed_path = directory / REMOVED
        before = (np.load(removed_path, allow_pickle=False).astype(np.int64)
                  if removed_path.exists() else np.zeros(0, dtype=np.int64))
        again = [i for i, r in rows.items() if r in set(before.tolist())]
        if again:
            raise InputError(
                f"{len(again)} id(s) were already removed from {str(directory)!r}: "
                f"{', '.join(repr(a) for a in again[:_SHOWN])}. Leave them out; nothing was "
                f"changed.")
        take = np.asarray(sorted(rows.values()), dtype=np.int64)
        with atomic_directory(directory) as tmp:
            _link_tree(directory, tmp, {"samples.jsonl", "sample_offsets.npy", REMOVED})
            version = int(manifest.get("index_version", 1)) + 1
            drop = set(take.tolist())
            offsets = [0]
            with (tmp / "samples.jsonl").open("wb") as fh:
                for row, rec in enumerate(store.records()):
                    if row in drop:
                        rec = {"id": rec["id"], "sha256": rec["sha256"], "text": "", "meta": {},
                               "removed_in_version": version}
                    line = json.dumps(rec, ensure_ascii=False, default=str).encode("utf-8")
                    fh.write(line + b"\n")
                    offsets.append(offsets[-1] + len(line) + 1)
            np.save(tmp / "sample_offsets.npy", np.asarray(offsets, dtype=np.int64))
            np.save(tmp / REMOVED, np.union1d(before, take).astype(np.int64))
            manifest["counts"] = {**manifest["counts"], "removed": int(len(before) + len(take))}
            manifest = _finish(tmp, manifest, {"action": "remove", "samples": len(take),
                                               "ids": ids, "rows": take.tolist()})
    finally:
        store.close()
    log.info("removed %d samples from %s (version %d)", len(take), directory,
             manifest["index_version"])
    return manifest
