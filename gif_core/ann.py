"""Approximate nearest-neighbour search over fingerprints ``h`` (the ANN channel).

Three index families, chosen from the corpus size and the memory available
(:meth:`gif_core.config.IndexConfig.resolve`, which calls :func:`choose_factory`):

==========  ======================  ====================  =====================================
family      when (auto)             RAM per sample        search
==========  ======================  ====================  =====================================
Flat        N < 20,000              4·D bytes             exact
HNSW32      N < 200,000, and fits   ≈ 4·D + 300 bytes     graph walk, float vectors
IVF-PQ      otherwise               < 2 (memory-mapped)   nprobe of √N lists of M-byte codes,
                                                          then exact re-ranking from the store
==========  ======================  ====================  =====================================

(D: fingerprint dims, M: PQ code bytes, D / 8 by default.) An IVF-PQ index is trained on a
seeded sample (:data:`TRAIN_SAMPLE` rows at most), filled chunk by chunk, written once and read
back with ``faiss.IO_FLAG_MMAP``, so its inverted lists stay on disk and only the probed lists are
paged in. Its distances are approximate, so :class:`FingerprintSearcher` asks it for
``rerank × K`` candidates and re-ranks them with exact inner products computed from the stored
float16 fingerprint parts, reading only the candidates' rows.

Takedowns: rows in the takedown list are excluded inside the FAISS search (an ``IDSelectorNot``
over an ``IDSelectorBatch``), so K results still come back when removed rows would have ranked.

Known limits: HNSW cannot be memory-mapped usefully (the graph walk touches the whole file), so
it is only chosen while it fits in a quarter of the available memory; an IVF-PQ index trained on
one corpus keeps its coarse centroids when samples are added later (``gif add``), which is fine
while the added data look like the old.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

FLAT_MAX = 20_000
"""Below this many samples exact search is fast enough (about 1 ms per 10k rows)."""
HNSW_MAX = 200_000
"""Above this, HNSW's build (about 1.4k vectors/s on two cores) and its RAM stop paying off."""
HNSW_M = 32
MEMORY_FRACTION = 0.25
"""Share of the available memory an in-RAM index may take when the choice is automatic."""
TRAIN_SAMPLE = 256_000
"""Rows an IVF-PQ index is trained on at most (coarse k-means and PQ codebooks)."""
RERANK = 60
"""Candidates asked of a compressed index per result wanted: K results from ``RERANK × K``.

Measured by benchmarks/scale.py (nprobe = N_lists / 8), recall@100 against exact search: at 10^6
samples 0.92 at 10, 0.98 at 30, 0.99 at 60; at 10^7 0.92 at 30, 0.96 at 60 (p95 104 ms). The PQ
codes, not the IVF partition, limit it, and the exact re-ranking of 60 × K rows is cheap."""
HNSW_EF_PER_K = 2
IVF_NITER = 10
"""k-means iterations of the coarse quantiser; centroids barely move after ten on a sample."""


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``), or physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def pq_bytes(d: int) -> int:
    """PQ sub-quantisers M for D dims: D / 8 (8 dims per byte), or the nearest divisor below."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


def ivf_lists(n: int) -> int:
    """Coarse lists for N samples: the power of two nearest √N, in [256, 65536]."""
    return int(min(65536, max(256, 2 ** round(math.log2(math.sqrt(max(n, 1)))))))


def auto_nprobe(nlist: int) -> int:
    """Lists scanned per query when ``nprobe`` is 0: an eighth of them, at least 16.

    Measured on the scale benchmark's mixture data: the IVF partition, not the PQ codes, limits
    recall once candidates are re-ranked, and scanning 1/16 of the lists leaves recall@100 near
    0.95 while 1/8 keeps it above."""
    return int(min(nlist, max(16, nlist // 8)))


def ivfpq_factory(n: int, d: int) -> str:
    nlist = ivf_lists(n)
    # above a few thousand centroids the coarse assignment itself costs more than the list scan;
    # an HNSW graph over the centroids makes it logarithmic
    quantiser = "_HNSW32" if nlist >= 4096 else ""
    # "np": no polysemous training, which costs minutes and only helps Hamming-filtered search
    return f"IVF{nlist}{quantiser},PQ{pq_bytes(d)}np"


def hnsw_bytes(n: int, d: int) -> int:
    """RAM of an HNSW32 index over N float32 vectors: vectors plus about 2·M links per node."""
    return int(n * (4 * d + 2 * HNSW_M * 4 * 1.2))


def choose_factory(n: int, d: int, memory: int | None = None) -> str:
    """The FAISS factory string ``auto`` stands for (see the module docstring)."""
    memory = available_memory() if memory is None else memory
    budget = MEMORY_FRACTION * memory
    if n < FLAT_MAX and 4 * d * n <= budget:
        return "Flat"
    if n < HNSW_MAX and hnsw_bytes(n, d) <= budget:
        return f"HNSW{HNSW_M}"
    return ivfpq_factory(n, d)


def is_compressed(index: faiss.Index) -> bool:
    """True if the index's distances are approximate (PQ or SQ codes), so re-ranking pays."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return not isinstance(ivf, faiss.IndexIVFFlat)
    return not isinstance(index, (faiss.IndexFlat, faiss.IndexHNSWFlat))


def new_index(d: int, factory: str) -> faiss.Index:
    try:
        return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"index.factory {factory!r} is not a valid FAISS factory string "
                          f"({str(exc).splitlines()[0]}). Use 'auto', 'Flat', 'HNSW32' or "
                          f"'IVF4096_HNSW32,PQ48'.") from exc


def train_sample_rows(n: int, seed: int = 0, size: int = TRAIN_SAMPLE) -> np.ndarray:
    """Sorted rows a compressed index is trained on (all rows when N <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def train(index: faiss.Index, xt: np.ndarray) -> None:
    """Train an untrained index on a sample ``xt`` (nt, D); a trained one is left alone."""
    if index.is_trained:
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = IVF_NITER
        # the sample may hold fewer than FAISS's preferred 39 points per list; that is fine for
        # a coarse partition and the warning would only be noise
        ivf.cp.min_points_per_centroid = 1
        if hasattr(ivf, "pq"):
            ivf.pq.cp.niter = IVF_NITER
            ivf.pq.cp.min_points_per_centroid = 1
    try:
        index.train(np.ascontiguousarray(xt, dtype=np.float32))
    except RuntimeError as exc:
        if "training points" not in str(exc):
            raise
        raise ConfigError(f"the FAISS index needs more training samples than the {len(xt):,} "
                          f"given ({str(exc).splitlines()[0].split(': ')[-1]}). Use "
                          f"--index-factory auto, or fewer IVF lists / PQ bits.") from None


def add_chunks(index: faiss.Index, chunks: Iterable[np.ndarray],
               progress: Callable[[int], None] | None = None) -> None:
    """Add fingerprint chunks in row order (FAISS ids are consecutive from ``index.ntotal``)."""
    for xb in chunks:
        index.add(np.ascontiguousarray(xb, dtype=np.float32))
        if progress is not None:
            progress(int(index.ntotal))


def tune(index: faiss.Index, ef_search: int, nprobe: int) -> int:
    """Set search parameters that apply to this index; returns the nprobe used (0 if none)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe == 0:
        nprobe = auto_nprobe(int(ivf.nlist))
    params = faiss.ParameterSpace()
    for name, value in (("efSearch", ef_search), ("nprobe", nprobe)):
        try:
            params.set_index_parameter(index, name, value)
        except RuntimeError:
            pass  # the parameter does not apply to this index type
    return nprobe if ivf is not None else 0


def read_index(path: str, mmap: bool = True) -> faiss.Index:
    """Open an index file; IVF indexes are memory-mapped (their lists stay on disk)."""
    if mmap:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP)
        if faiss.try_extract_index_ivf(index) is not None:
            return index
    # flat and graph indexes are read into RAM: every query touches all of a flat file and most
    # of a graph, so mapping them would only move the cost to page faults
    return faiss.read_index(path)


def ram_bytes(index: faiss.Index) -> int:
    """Bytes the index keeps in anonymous memory once opened by :func:`read_index`.

    For a memory-mapped IVF index this is the coarse quantiser and the per-list bookkeeping; the
    codes and ids are file pages the kernel may drop. For in-RAM indexes it is the serialised size.
    """
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return int(faiss.serialize_index(index).size)
    quantiser = int(faiss.serialize_index(ivf.quantizer).size)
    return quantiser + 32 * int(ivf.nlist)


@dataclass
class SearchParams:
    ef_search: int = 128
    nprobe: int = 0
    """0: :func:`auto_nprobe`."""


class FingerprintSearcher:
    """Top-K fingerprints for queries, exact where the index is approximate.

    Args:
        index: a FAISS index over the fingerprints, row i = FAISS id i.
        exact_rows: ``rows -> (len(rows), D) float32`` fingerprints read from the store; used to
            re-rank a compressed index's candidates (None disables re-ranking).
        rerank: candidates fetched per result wanted from a compressed index.
        removed: rows never to return (takedowns).
    """

    def __init__(self, index: faiss.Index, exact_rows: Callable[[np.ndarray], np.ndarray] | None,
                 params: SearchParams, rerank: int = RERANK,
                 removed: np.ndarray | None = None):
        self.index = index
        self.exact_rows = exact_rows
        self.params = params
        self.rerank = rerank if (exact_rows is not None and is_compressed(index)) else 1
        self.nprobe = tune(index, params.ef_search, params.nprobe)
        self.removed = np.zeros(0, np.int64) if removed is None else np.asarray(removed, np.int64)
        self._search_params = self._make_search_params()

    def _make_search_params(self, k: int = 0):
        sel = None
        if self.removed.size:
            # the selectors must outlive every search, so they are kept on the instance
            if not hasattr(self, "_not"):
                self._batch = faiss.IDSelectorBatch(np.ascontiguousarray(self.removed))
                self._not = faiss.IDSelectorNot(self._batch)
            sel = self._not
        if isinstance(self.index, faiss.IndexHNSW):
            # a beam narrower than about 2k loses recall at k (0.95 at k = 100, efSearch = 128)
            return faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.params.ef_search,
                                                                    HNSW_EF_PER_K * k))
        if sel is None:
            return None
        if faiss.try_extract_index_ivf(self.index) is not None:
            return faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        return faiss.SearchParameters(sel=sel)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (nq, k), best first; missing results are id -1, score -inf."""
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        nq = len(xq)
        k_ann = min(max(k * self.rerank, k), max(int(self.index.ntotal), 1))
        params = (self._make_search_params(k_ann) if isinstance(self.index, faiss.IndexHNSW)
                  else self._search_params)
        dist, ids = self.index.search(xq, k_ann, params=params)
        if self.rerank == 1:
            return dist[:, :k], ids[:, :k]
        dist_out = np.full((nq, k), -np.inf, dtype=np.float32)
        ids_out = np.full((nq, k), -1, dtype=np.int64)
        for q in range(nq):
            cand = ids[q][ids[q] >= 0]
            if not cand.size:
                continue
            # sorted rows read the memory-mapped store front to back
            rows = np.sort(cand)
            xb = self.exact_rows(rows)  # (len(rows), D)
            scores = xb @ xq[q]
            top = np.lexsort((rows, -scores))[:k]
            dist_out[q, :len(top)] = scores[top]
            ids_out[q, :len(top)] = rows[top]
        return dist_out, ids_out
