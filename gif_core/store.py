"""On-disk stores of an index directory: sample records, arrays, manifest, atomic writes.

Layout of an index directory (every file written into a temporary sibling, renamed in at the end;
a build in progress also keeps ``work/`` and ``done/`` there, see :mod:`gif_core.pipeline`)::

    manifest.json        format version, config, library versions, hashes, counts, timings
    samples.jsonl        one record per sample: id, sha256, text, meta (row order = FAISS ids)
    sample_offsets.npy   (N+1,) int64 byte offsets into samples.jsonl, for random access
    embeddings.npy       (N, d) float16   frozen-encoder embeddings ê
    grad_proj.npy        (N, m) float16   projected gradients c = P g
    labels.npy           (N,) int32       pseudo-labels ℓ
    centroids.npy        (C, d) float32
    probe.safetensors    probe weights θ̂
    ekfac.safetensors    EK-FAC factors of the probe's damped Gauss–Newton matrix (influence)
    fingerprints.faiss   FAISS index over h = [ê ; α·ĉ] (IVF ones are read memory-mapped)
    removed.npy          (R,) int64 rows taken down by ``gif remove`` (absent when none)
    lexical/, verbatim/  evidence channels
    ranker.json          fusion ranker and abstention calibration

Arrays are ``.npy`` read with ``allow_pickle=False`` (memory-mapped); weights use safetensors;
nothing a user hands in is unpickled.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .data import Sample
from .errors import IndexFormatError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False),
                   encoding="utf-8")
    os.replace(tmp, path)


def building_folder(target: Path, key: str) -> Path:
    """The hidden sibling a resumable build of ``target`` with this key writes into."""
    return target.with_name(f".{target.name}.building-{key[:16]}")


@contextmanager
def atomic_directory(target: str | Path, resume_key: str | None = None):
    """Yield a temporary directory that replaces ``target`` only if the block succeeds.

    A crash or error inside the block leaves ``target`` exactly as it was. The swap renames the
    old folder aside, renames the new one in, then deletes the old one, so at every instant
    ``target`` is either the old or the new complete index.

    Without ``resume_key`` the temporary folder is fresh and removed on any failure. With it, the
    folder is named after the key (:func:`building_folder`), reused if an earlier attempt left it,
    and kept when the block is interrupted or crashes, so the same build can pick up its finished
    work; it is still removed when the block raises a :class:`GIFError` (bad input fails the same
    way again).
    """
    from .errors import GIFError

    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise IndexFormatError(f"--out {str(target)!r} exists and is not a directory. Choose "
                               f"another path.")
    if resume_key is None:
        tmp = target.with_name(f".{target.name}.building-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
    else:
        tmp = building_folder(target, resume_key)
        if tmp.exists():
            log.info("resuming the build in %s", tmp)
        tmp.mkdir(exist_ok=True)
    try:
        yield tmp
    except BaseException as exc:
        if resume_key is None or isinstance(exc, GIFError):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log.warning("build stopped (%s); its finished work is kept in %s and the same build "
                        "run again resumes from it", type(exc).__name__, tmp)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_records(fh, samples: Iterable[Sample], offsets: list[int]) -> None:
    """Append one ``samples.jsonl`` line per sample to ``fh`` and its end offset to ``offsets``
    (whose last entry is where the next line starts)."""
    for s in samples:
        line = json.dumps({"id": s.id, "sha256": s.sha256, "text": s.text, "meta": s.meta},
                          ensure_ascii=False, default=str).encode("utf-8") + b"\n"
        fh.write(line)
        offsets.append(offsets[-1] + len(line))


def write_samples(directory: Path, samples: Iterable[Sample]) -> int:
    offsets = [0]
    with (directory / "samples.jsonl").open("wb") as fh:
        write_records(fh, samples, offsets)
    np.save(directory / "sample_offsets.npy", np.asarray(offsets, dtype=np.int64))
    return len(offsets) - 1


class SampleStore:
    """Random access to sample records by row, memory-mapped."""

    def __init__(self, directory: Path):
        # memory-mapped: 8 bytes per sample that need not sit in RAM
        self.offsets = np.load(directory / "sample_offsets.npy", allow_pickle=False,
                               mmap_mode="r")
        self._fh = (directory / "samples.jsonl").open("rb")
        size = os.fstat(self._fh.fileno()).st_size
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._ids: list[str] | None = None
        self._row_of: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def record(self, row: int) -> dict[str, Any]:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return json.loads(self._mm[start:end])

    def text(self, row: int) -> str:
        return self.record(row)["text"]

    def records(self):
        """Every record in row order, each parsed once."""
        return (self.record(i) for i in range(len(self)))

    def id_text_pairs(self) -> list[tuple[str, str]]:
        """(id, text) of every sample in row order, taken-down samples left out: the input of
        the query generators."""
        return [(r["id"], r["text"]) for r in self.records() if "removed_in_version" not in r]

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = [r["id"] for r in self.records()]
        return self._ids

    def row_of(self, sample_id: str) -> int | None:
        if self._row_of is None:
            self._row_of = {sid: i for i, sid in enumerate(self.ids)}
        return self._row_of.get(sample_id)

    def close(self) -> None:
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        self._fh.close()


def load_array(directory: Path, name: str, mmap_mode: str | None = "r") -> np.ndarray:
    path = directory / name
    if not path.exists():
        raise IndexFormatError(f"index {str(directory)!r} lacks {name}: it is partly written or "
                               f"from another version. Rebuild it with `gif build`.")
    return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexFormatError(f"index {str(directory)!r} does not exist or is not a directory. "
                               f"Build one with `gif build CORPUS --out {directory}`.")
    path = directory / MANIFEST
    if not path.exists():
        raise IndexFormatError(f"{str(directory)!r} has no {MANIFEST}: it is not a GIF index, or "
                               f"its build did not finish. Rebuild it with `gif build`.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path} is damaged ({exc}). Rebuild the index.") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(f"index {str(directory)!r} has format version {version!r}; this GIF "
                               f"reads version {FORMAT_VERSION}. Rebuild it with this version "
                               f"(`gif build`), or install the GIF release that built it.")
    return manifest


def read_component_meta(directory: Path, meta_name: str, fmt: str, version: int,
                        required: tuple[str, ...], label: str) -> dict[str, Any]:
    """Check that a component folder (lexical/, verbatim/) is complete and of this version, and
    return its metadata; every problem is an :class:`IndexFormatError` that says to rebuild."""
    d = Path(directory)
    missing = [n for n in (*required, meta_name) if not (d / n).exists()]
    if missing:
        raise IndexFormatError(f"{label} index at {d} is missing {', '.join(missing)}; rebuild "
                               f"the index")
    meta_path = d / meta_name
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{meta_path} is unreadable ({exc}); rebuild the index") from exc
    if meta.get("format") != fmt or meta.get("format_version") != version:
        raise IndexFormatError(
            f"{meta_path} has format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}, expected {fmt!r} version {version}; rebuild the "
            f"index with this version of GIF")
    return meta


def file_sizes(directory: Path) -> dict[str, int]:
    """Byte size of every file in an index directory, by relative path (for the manifest)."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def check_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Refuse an index whose files are missing or of another size than the build wrote.

    A cheap guard against truncated or swapped files; content hashes would cost a full read.
    """
    expected = manifest.get("files")
    if not expected:
        return
    problems = []
    for name, size in expected.items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, the build wrote {size}")
    if problems:
        raise IndexFormatError(f"index {str(directory)!r} is damaged: {'; '.join(problems[:3])}"
                               f"{' …' if len(problems) > 3 else ''}. Rebuild it with `gif build`.")


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


class Timer:
    """Collects stage durations in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1000
