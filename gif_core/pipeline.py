"""Streaming, resumable build: the corpus is encoded and fingerprinted in chunks.

The per-chunk work runs on an *executor*, in this process (:class:`LocalExecutor`) or on Ray
workers (:mod:`gif_core.distributed`); both run the same :class:`ChunkWorker` methods on the same
chunk boundaries, so a Ray build equals a local one up to float rounding. The driver writes every
finished chunk into memory-mapped ``.npy`` arrays of a work folder and then records it as done::

    pass 1   chunk i of texts ─► worker.encode ─► work/e32.npy rows       ─► done/encode-i
    driver   seeded sample of e ─► k-means centroids, probe θ̂ (the same for every worker)
    pass 2   chunk i of e ─► worker.fingerprint ─► work/labels, work/c32   ─► done/fingerprint-i

Nothing holds all N embeddings in RAM: k-means and the probe see a seeded sample (at most
``labels.sample_size`` rows), and every later stage reads the memory-mapped arrays chunk by chunk.

Resuming: the build folder is named after a key of the corpus (ids and content hashes, in
order), the whole config and the encoder weights (:func:`build_key`). An interrupted build
leaves it in place, hidden next to the target; running the same build again picks it up and
skips every chunk and stage already marked done. The target index is only replaced by the final
atomic swap (:func:`gif_core.store.atomic_directory`), so until then the previous index stays
usable.

Known limits: sample texts are held in RAM by the caller (a list of :class:`Sample`); the lexical
and verbatim channels are built in one piece from them (see :mod:`gif_core.lexical`); the work
folder needs about ``N × (6·d + 6·m)`` bytes next to the target until the swap; the work arrays
are memory-mapped, so a process's RSS counts the file pages it touched (page cache the kernel
can reclaim, not anonymous memory): measure a build's memory with ``RssAnon``, not peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from .config import BuildConfig, EncoderConfig, ProbeConfig, ProjectionConfig
from .data import Sample
from .encoders import TextEncoder
from .errors import InputError
from .labels import assign
from .probe import Probe
from .projection import make_projector
from .threads import single_thread

log = logging.getLogger(__name__)

WORK = "work"
DONE = "done"
SAFETY = 1.2
"""Margin on the disk estimate: FAISS and bm25s file overheads, the manifest, the ranker."""


class ChunkWorker:
    """The per-chunk work of a build: encode texts, then label and project their embeddings.

    One instance lives in the build process (local) or in each Ray actor; it owns its encoder,
    and receives the probe once it has been trained on the driver.
    """

    def __init__(self, encoder_config: EncoderConfig, encoder: TextEncoder | None = None):
        self.encoder = encoder or TextEncoder(encoder_config)
        self.probe: Probe | None = None

    def weights_sha256(self) -> str:
        return self.encoder.weights_sha256

    def version(self) -> str:
        from . import __version__

        return __version__

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(B, d) float32 unit embeddings."""
        return np.asarray(self.encoder.encode(list(texts)), dtype=np.float32)

    def set_probe(self, state: dict[str, np.ndarray], d: int, num_classes: int,
                  probe_config: ProbeConfig, projection_config: ProjectionConfig,
                  centroids: np.ndarray) -> None:
        probe = Probe(d, probe_config.hidden, num_classes)
        probe.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        probe.eval()
        self.probe = probe
        self.projector = make_projector(probe, projection_config)
        self.centroids = np.asarray(centroids, dtype=np.float32)

    def fingerprint(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-labels (B,) int32 and gradient projections (B, m) float32 of embeddings e."""
        if self.probe is None:
            raise RuntimeError("set_probe must be called before fingerprint")
        e = np.array(e, dtype=np.float32)  # a writable copy: torch refuses read-only memmaps
        labels = assign(e, self.centroids)
        with torch.no_grad(), single_thread():
            c = self.projector.project(self.probe, torch.from_numpy(e),
                                       torch.from_numpy(labels)).detach().numpy()
        return labels.astype(np.int32), np.asarray(c, dtype=np.float32)


class LocalExecutor:
    """Runs the chunk work in this process, one chunk at a time, in order."""

    name = "local"

    def __init__(self, worker: ChunkWorker):
        self.worker = worker

    def weights_sha256(self) -> str:
        return self.worker.weights_sha256()

    def encode(self, chunks: Iterable[tuple[int, Sequence[str]]]
               ) -> Iterator[tuple[int, np.ndarray]]:
        for i, texts in chunks:
            yield i, self.worker.encode(texts)

    def set_probe(self, *args) -> None:
        self.worker.set_probe(*args)

    def fingerprint(self, chunks: Iterable[tuple[int, np.ndarray]]
                    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for i, e in chunks:
            yield (i, *self.worker.fingerprint(e))

    def close(self) -> None:
        pass


def build_key(samples: Sequence[Sample], config: BuildConfig, weights_sha256: str,
              version: str) -> str:
    """Hex key of what a build depends on: sample ids and hashes in order, config, encoder."""
    h = hashlib.sha256()
    h.update(json.dumps({"config": config.to_dict(), "encoder": weights_sha256,
                         "gif": version}, sort_keys=True).encode())
    for s in samples:
        h.update(s.id.encode("utf-8", "surrogatepass") + b"\0" + s.sha256.encode() + b"\n")
    return h.hexdigest()


def estimate_bytes(n: int, text_bytes: int, d: int, m: int) -> int:
    """Disk a build of ``n`` samples needs at its peak (work arrays and final index together)."""
    work = n * (4 * d + 4 * m + 4)
    final = n * (2 * d + 2 * m + 4 + 8 + 4 * d + 64)  # stores, offsets, ANN (Flat at worst)
    texts = 4 * text_bytes  # samples.jsonl, lexical postings, verbatim postings, json overhead
    return int(SAFETY * (work + final + texts))


def check_disk(target: Path, need: int, what: str) -> None:
    """Refuse to start when the disk under ``target`` has less than ``need`` bytes free."""
    probe = target if target.exists() else target.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise InputError(
            f"{what} needs about {need / 1e9:.2f} GB of disk next to {str(target)!r}, but only "
            f"{free / 1e9:.2f} GB are free. Free some space, or write the index to a larger "
            f"disk with --out.")


class WorkFolder:
    """Chunk arrays and done-markers of a build, inside its (resumable) build folder."""

    def __init__(self, root: Path):
        self.root = root
        self.work = root / WORK
        self.done = root / DONE
        self.work.mkdir(exist_ok=True)
        self.done.mkdir(exist_ok=True)

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A writable memory-mapped array, created once and reopened on resume."""
        path = self.work / f"{name}.npy"
        if path.exists():
            arr = np.load(path, mmap_mode="r+", allow_pickle=False)
            if arr.shape == shape and arr.dtype == np.dtype(dtype):
                return arr
            log.warning("work array %s has shape %s, expected %s; starting it again", path,
                        arr.shape, shape)
            del arr
        return open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def is_done(self, stage: str, i: int | None = None) -> bool:
        return (self.done / (stage if i is None else f"{stage}-{i:06d}")).exists()

    def mark_done(self, stage: str, i: int | None = None) -> None:
        (self.done / (stage if i is None else f"{stage}-{i:06d}")).touch()

    def save_json(self, name: str, obj: Any) -> None:
        (self.work / name).write_text(json.dumps(obj))

    def load_json(self, name: str) -> Any:
        return json.loads((self.work / name).read_text())

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.done, ignore_errors=True)


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + chunk)) for start in range(0, n, chunk)]


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted seeded sample of ``size`` rows of ``n`` (all rows, in order, when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
