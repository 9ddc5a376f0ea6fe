"""Verbatim evidence channel: hashed word n-gram (shingle) index and shared-span finder.

Index
    Every sample is normalised (:func:`gif_core.normalize.normalize_text`) and cut into the
    positional token stream of :func:`gif_core.normalize.verbatim_tokens` (words; one token per
    character for Han, Kana, Thai and other space-less scripts). Each window of ``n`` consecutive
    tokens (a shingle) is hashed to 64 bits; a sample with fewer than ``n`` tokens gets a single
    shingle of all its tokens. The index is two parallel arrays sorted by hash, ``keys`` (uint64)
    and ``docs`` (uint32), one entry per distinct (shingle, sample) pair, so a lookup is a binary
    search and the files are memory-mappable ``.npy`` arrays.

    Shingles present in more than ``max(MIN_DF_CAP, max_df_fraction * N)`` samples (boilerplate
    such as licence headers) are dropped from the postings at build time to bound index size and
    query cost; their hashes are kept in a small ``stop`` array and are ignored on the query side
    too, so an exact copy of a sample still has coverage 1.0.

    :meth:`VerbatimIndex.build_to` builds the same arrays in bounded memory: texts are read from
    any iterable a batch at a time, their (shingle, row) pairs buffered up to :data:`RUN_PAIRS`,
    sorted by hash and written to scratch *run* files with an offset table over the top
    :data:`BUCKET_BITS` bits of the hash; the runs are then merged one range of hash buckets at a
    time (at most :data:`MERGE_PAIRS` pairs; a bucket over that, as a boilerplate shingle makes
    one, is halved by hash range until it fits or holds one hash, whose pairs are then copied run
    by run), the df cap applied with the final N, and the result written front to back without
    a memory map. Memory beyond the fixed buffers: the
    offset tables (32 KB per run) and the stop list.

Query
    A query's distinct shingles (minus stop shingles) are looked up; a sample's *coverage* is the
    fraction of those shingles it contains. At most :data:`MAX_QUERY_SHINGLES` distinct shingles
    are considered: beyond that, an evenly spaced subset by first position in the query is used,
    so a 100,000-character paste costs at most 4,096 binary searches.

Spans
    :func:`find_spans` reports the longest passages two texts share, with offsets into the
    original (un-normalised) strings. Matching is on normalised tokens, so case, Unicode form,
    confusables, whitespace and punctuation between words may differ inside a span.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gif_core.errors import IndexFormatError, InputError
from gif_core.lexical import (
    NpyAppender,
    Scratch,
    _batches,
    _check_k,
    _check_query,
    _check_rows,
    _check_texts,
    install,
    plan_blocks,
    rank_sparse,
    read_slice,
)
from gif_core.normalize import normalize_text, normalize_with_bounds, token_spans, verbatim_tokens
from gif_core.store import read_component_meta

logger = logging.getLogger(__name__)

__all__ = ["Span", "VerbatimIndex", "find_spans", "MAX_QUERY_SHINGLES", "nbytes_on_disk"]

MAX_QUERY_SHINGLES = 4096
MIN_DF_CAP = 64
FORMAT_VERSION = 1
_META_NAME = "gif_verbatim.json"
_ARRAYS = ("keys", "docs", "stop")
_BATCH_DOCS = 4096
RUN_PAIRS = 2_000_000
"""(shingle, row) pairs buffered before a sorted run is written (12 bytes each: about 24 MB)."""
MERGE_PAIRS = 1_000_000
"""Pairs merged at a time from all runs."""
BUCKET_BITS = 12
"""Top hash bits that split a run into ranges the merge reads one at a time."""

# Odd 64-bit multipliers, one per window position, plus one for the window length.
_MULTIPLIERS = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xA0761D6478BD642F,
        0xE7037ED1A0B428DB,
        0x8EBC6AF09C88C6E3,
        0x589965CC75374CC3,
        0x1D8E4E27C47D124F,
        0xBF58476D1CE4E5B9,
        0x94D049BB133111EB,
        0x2545F4914F6CDD1D,
        0x9FB21C651E98DF25,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x87C37B91114253D5,
    ],
    dtype=np.uint64,
)
_LEN_MULT = np.uint64(0xD1B54A32D192ED03)
MAX_N = len(_MULTIPLIERS)


@lru_cache(maxsize=1 << 18)
def _token_hash(tok: str) -> int:
    return int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "little")


def _token_hashes(tokens: list[str]) -> np.ndarray:
    return np.fromiter(map(_token_hash, tokens), dtype=np.uint64, count=len(tokens))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised, wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _window_hashes(th: np.ndarray, n: int) -> np.ndarray:
    """Hash of every window of ``n`` consecutive token hashes in ``th`` (len(th) >= n)."""
    m = th.size - n + 1
    acc = np.full(m, _LEN_MULT, dtype=np.uint64) * np.uint64(n)
    for j in range(n):
        acc += th[j : j + m] * _MULTIPLIERS[j]
    return _mix(acc)


def _short_hash(th: np.ndarray) -> np.uint64:
    """Hash of a whole token sequence shorter than ``n`` (same scheme, its own length)."""
    return _window_hashes(th, th.size)[0]


def _shingles(tokens: list[str], n: int) -> np.ndarray:
    """Shingle hashes of one token stream in position order (duplicates kept)."""
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    th = _token_hashes(tokens)
    if th.size < n:
        return np.array([_short_hash(th)], dtype=np.uint64)
    return _window_hashes(th, n)


def _meta(num: int, n: int, max_df_fraction: float, cap: int, postings: int, stops: int
          ) -> dict:
    return {"format": "gif-verbatim", "format_version": FORMAT_VERSION, "num_docs": num, "n": n,
            "max_df_fraction": float(max_df_fraction), "df_cap": cap, "num_postings": postings,
            "num_stop_shingles": stops}


def nbytes_on_disk(directory: str | Path) -> int:
    """Bytes used by the verbatim index files in ``directory``."""
    d = Path(directory)
    names = [f"verbatim_{a}.npy" for a in _ARRAYS] + [_META_NAME]
    return sum((d / name).stat().st_size for name in names if (d / name).exists())


class VerbatimIndex:
    """Shingle inverted index; rows are corpus positions ``0 .. num_docs - 1``."""

    def __init__(self, keys: np.ndarray, docs: np.ndarray, stop: np.ndarray, meta: dict) -> None:
        self._keys = keys
        self._docs = docs
        self._stop = stop
        self._meta = meta
        self._n = int(meta["num_docs"])
        self.n = int(meta["n"])

    # ---------------------------------------------------------------- build / io

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        *,
        n: int = 5,
        max_df_fraction: float = 0.01,
        show_progress: bool = False,
    ) -> VerbatimIndex:
        """Index the ``n``-token shingles of ``texts`` in memory (all pairs at once);
        :meth:`build_to` does the same in bounded memory. Raises :class:`InputError` when empty."""
        texts = _check_texts(texts)
        cls._check_params(n, max_df_fraction)
        num = len(texts)
        key_parts: list[np.ndarray] = []
        doc_parts: list[np.ndarray] = []
        batches = range(0, num, _BATCH_DOCS)
        if show_progress:
            try:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc="verbatim shingles", unit="batch")
            except ImportError:  # pragma: no cover - tqdm is a dependency
                pass
        for lo in batches:
            hi = min(num, lo + _BATCH_DOCS)
            keys, docs = cls._batch_pairs(texts, lo, hi, n)
            key_parts.append(keys)
            doc_parts.append(docs)
        keys = np.concatenate(key_parts) if key_parts else np.zeros(0, dtype=np.uint64)
        docs = np.concatenate(doc_parts) if doc_parts else np.zeros(0, dtype=np.uint32)
        if keys.size == 0:
            raise InputError(
                "no text in the corpus contains a word token; check that the text field is set "
                "to the column holding the sample text"
            )
        # batches are in row order and sorted by row inside, so a stable sort on the hash leaves
        # rows ascending within each hash
        order = np.argsort(keys, kind="stable")
        keys, docs = keys[order], docs[order]
        # drop shingles that occur in too many samples
        cap = max(MIN_DF_CAP, int(np.ceil(max_df_fraction * num)))
        new = np.concatenate(([True], keys[1:] != keys[:-1]))
        starts = np.flatnonzero(new)
        df = np.diff(np.append(starts, keys.size))
        common = df > cap
        if common.any():
            stop = keys[starts[common]]
            drop = np.repeat(common, df)
            keys, docs = keys[~drop], docs[~drop]
        else:
            stop = np.zeros(0, dtype=np.uint64)
        meta = _meta(num, n, max_df_fraction, cap, int(keys.size), int(stop.size))
        logger.info(
            "verbatim index: %d docs, %d postings, %d common shingles dropped (df > %d)",
            num,
            keys.size,
            stop.size,
            cap,
        )
        return cls(keys, docs, stop, meta)

    @classmethod
    def build_to(
        cls,
        directory: str | Path,
        texts: Iterable[str],
        *,
        n: int = 5,
        max_df_fraction: float = 0.01,
        run_pairs: int = RUN_PAIRS,
        merge_pairs: int = MERGE_PAIRS,
    ) -> VerbatimIndex:
        """Index ``texts`` (any iterable, read once) into the existing ``directory`` in bounded
        memory (see the module docstring) and open the result memory-mapped.

        Same arrays as ``build(texts, n=n, max_df_fraction=...).save(directory)``. An index
        already in ``directory`` stays usable until the new one is complete; if the build fails
        (bad input, interruption) it is left as it was.
        """
        d = Path(directory)
        if not d.is_dir():
            raise InputError(f"{d} is not a directory; create it before building the verbatim "
                             f"index")
        cls._check_params(n, max_df_fraction)
        shift = np.uint64(64 - BUCKET_BITS)
        buckets = 1 << BUCKET_BITS
        with Scratch(d, "verbatim") as scratch:
            runs: list[tuple[Path, Path, np.ndarray]] = []
            buf_k: list[np.ndarray] = []
            buf_d: list[np.ndarray] = []
            buffered = 0

            def flush() -> None:
                nonlocal buffered
                if not buffered:
                    return
                keys = np.concatenate(buf_k)
                docs = np.concatenate(buf_d)
                buf_k.clear()
                buf_d.clear()
                # batches come in row order, rows ascending inside: a stable sort on the hash
                # leaves rows ascending within each hash
                order = np.argsort(keys, kind="stable")
                keys, docs = keys[order], docs[order]
                del order
                offsets = np.zeros(buckets + 1, dtype=np.int64)
                np.cumsum(np.bincount((keys >> shift).astype(np.int64), minlength=buckets),
                          out=offsets[1:])
                kp, dp = scratch / f"run{len(runs)}.keys", scratch / f"run{len(runs)}.docs"
                keys.tofile(kp)
                docs.tofile(dp)
                runs.append((kp, dp, offsets))
                buffered = 0

            num = 0
            for batch in _batches(texts, _BATCH_DOCS):
                keys, docs = cls._batch_pairs(batch, 0, len(batch), n)
                docs += np.uint32(num)
                num += len(batch)
                if num >= 2 ** 32:
                    raise InputError(f"{num:,} samples exceed the verbatim index's 2^32 rows")
                buf_k.append(keys)
                buf_d.append(docs)
                buffered += keys.size
                if buffered >= run_pairs:
                    flush()
            flush()
            if not runs:
                raise InputError(
                    "no text in the corpus contains a word token; check that the text field is "
                    "set to the column holding the sample text"
                )
            cap = max(MIN_DF_CAP, int(np.ceil(max_df_fraction * num)))
            counts = np.diff(sum(off for _, _, off in runs))
            out_k = NpyAppender(scratch / "verbatim_keys.npy", np.uint64)
            out_d = NpyAppender(scratch / "verbatim_docs.npy", np.uint32)
            stops: list[np.ndarray] = []
            for single, lo, hi in cls._merge_pieces(runs, counts, merge_pairs):
                if single:
                    # one shingle with more pairs than a block: its rows ascend run after run
                    df_one = sum(e - b for b, e in zip(lo, hi, strict=True))
                    r = next(i for i in range(len(runs)) if hi[i] > lo[i])
                    key = read_slice(runs[r][0], np.uint64, lo[r], lo[r] + 1)
                    if df_one > cap:
                        stops.append(key)
                        continue
                    for (_, dp, _), b, e in zip(runs, lo, hi, strict=True):
                        if e > b:
                            out_k.write(np.full(e - b, key[0], dtype=np.uint64))
                            out_d.write(read_slice(dp, np.uint32, b, e))
                    continue
                parts_k, parts_d = [], []
                for (kp, dp, _), b, e in zip(runs, lo, hi, strict=True):
                    if e > b:
                        parts_k.append(read_slice(kp, np.uint64, b, e))
                        parts_d.append(read_slice(dp, np.uint32, b, e))
                if not parts_k:
                    continue
                keys = np.concatenate(parts_k)
                docs = np.concatenate(parts_d)
                del parts_k, parts_d
                # runs are in row order, so a stable sort keeps rows ascending within a hash
                order = np.argsort(keys, kind="stable")
                keys, docs = keys[order], docs[order]
                del order
                new = np.concatenate(([True], keys[1:] != keys[:-1]))
                starts = np.flatnonzero(new)
                df = np.diff(np.append(starts, keys.size))
                common = df > cap
                if common.any():
                    stops.append(keys[starts[common]])
                    keep = ~np.repeat(common, df)
                    keys, docs = keys[keep], docs[keep]
                out_k.write(keys)
                out_d.write(docs)
                del keys, docs, new, starts, df, common
            out_k.close()
            out_d.close()
            stop = np.concatenate(stops) if stops else np.zeros(0, dtype=np.uint64)
            np.save(scratch / "verbatim_stop.npy", stop, allow_pickle=False)
            meta = _meta(num, n, max_df_fraction, cap, int(out_k.count), int(stop.size))
            install(d, {f"verbatim_{a}.npy": scratch / f"verbatim_{a}.npy" for a in _ARRAYS},
                    _META_NAME, meta)
        logger.info(
            "verbatim index: %d docs, %d postings, %d common shingles dropped (df > %d), %d runs",
            num, out_k.count, stop.size, cap, len(runs),
        )
        return cls.load(d)

    @staticmethod
    def _merge_pieces(runs: list[tuple[Path, Path, np.ndarray]], counts: np.ndarray,
                      limit: int):
        """Pieces of the merge in hash order: ``(single, lo, hi)`` with per-run pair ranges
        ``[lo[r], hi[r])`` holding at most ``limit`` pairs in all, or (``single`` True) all the
        pairs of one shingle hash, however many. Runs of hash buckets come from the offset
        tables; a bucket over the limit (a boilerplate shingle in many samples) is halved by
        hash range, with binary searches in the runs, until the pieces fit or hold one hash."""
        shift = 64 - BUCKET_BITS

        def positions(key: int) -> list[int]:
            out = []
            for kp, _, off in runs:
                keys_map = np.memmap(kp, dtype=np.uint64, mode="r") if off[-1] else None
                out.append(0 if keys_map is None else
                           int(np.searchsorted(keys_map, np.uint64(key))))
                del keys_map  # unmapped at once, so the pages searched do not add up
            return out

        def split(lo_key: int, hi_key: int, lo: list[int], hi: list[int]):
            total = sum(e - b for b, e in zip(lo, hi, strict=True))
            if total <= limit:
                yield False, lo, hi
            elif hi_key - lo_key == 1:
                yield True, lo, hi
            else:
                mid_key = (lo_key + hi_key) // 2
                mid = positions(mid_key)
                yield from split(lo_key, mid_key, lo, mid)
                yield from split(mid_key, hi_key, mid, hi)

        for a, b in plan_blocks(counts, limit):
            lo = [int(off[a]) for _, _, off in runs]
            hi = [int(off[b]) for _, _, off in runs]
            if b - a == 1 and counts[a] > limit:
                yield from split(a << shift, (a + 1) << shift, lo, hi)
            else:
                yield False, lo, hi

    @staticmethod
    def _check_params(n: object, max_df_fraction: object) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise InputError(f"n must be an integer in [1, {MAX_N}], got {n!r}; the default is 5")
        if not 0.0 < float(max_df_fraction) <= 1.0:
            raise InputError(
                f"max_df_fraction must be in (0, 1], got {max_df_fraction!r}; the default is 0.01"
            )

    @staticmethod
    def _batch_pairs(
        texts: Sequence[str], lo: int, hi: int, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (shingle hash, row) pairs of rows ``lo .. hi-1``, sorted by row then hash."""
        hashes: list[np.ndarray] = []
        lengths = np.zeros(hi - lo, dtype=np.int64)
        shorts_k: list[np.uint64] = []
        shorts_d: list[int] = []
        for i in range(lo, hi):
            toks = verbatim_tokens(normalize_text(texts[i]))
            if not toks:
                continue
            th = _token_hashes(toks)
            if th.size < n:
                shorts_k.append(_short_hash(th))
                shorts_d.append(i)
                continue
            hashes.append(th)
            lengths[i - lo] = th.size
        key_parts, doc_parts = [], []
        if hashes:
            allh = np.concatenate(hashes)
            row_of = np.repeat(np.arange(lo, hi, dtype=np.uint32), lengths)
            win = _window_hashes(allh, n)
            valid = row_of[: win.size] == row_of[n - 1 :]
            key_parts.append(win[valid])
            doc_parts.append(row_of[: win.size][valid])
        if shorts_k:
            key_parts.append(np.asarray(shorts_k, dtype=np.uint64))
            doc_parts.append(np.asarray(shorts_d, dtype=np.uint32))
        if not key_parts:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint32)
        keys = np.concatenate(key_parts)
        docs = np.concatenate(doc_parts)
        order = np.lexsort((keys, docs))
        keys, docs = keys[order], docs[order]
        distinct = np.concatenate(([True], (keys[1:] != keys[:-1]) | (docs[1:] != docs[:-1])))
        return keys[distinct], docs[distinct]

    def save(self, directory: str | Path) -> None:
        """Write ``verbatim_{keys,docs,stop}.npy`` and metadata into the existing ``directory``."""
        d = Path(directory)
        if not d.is_dir():
            raise InputError(f"{d} is not a directory; create it before saving the verbatim index")
        for name, arr in zip(_ARRAYS, (self._keys, self._docs, self._stop), strict=True):
            np.save(d / f"verbatim_{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (d / _META_NAME).write_text(json.dumps(self._meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> VerbatimIndex:
        """Open an index written by :meth:`save`; arrays are memory-mapped by default."""
        d = Path(directory)
        names = [f"verbatim_{a}.npy" for a in _ARRAYS]
        meta = read_component_meta(d, _META_NAME, "gif-verbatim", FORMAT_VERSION, tuple(names),
                                   "verbatim")
        mode = "r" if mmap else None
        try:
            keys, docs, stop = (np.load(d / x, mmap_mode=mode, allow_pickle=False) for x in names)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"verbatim index at {d} is corrupt ({exc}); rebuild it") from exc
        ok = (
            keys.dtype == np.uint64
            and docs.dtype == np.uint32
            and stop.dtype == np.uint64
            and keys.ndim == docs.ndim == stop.ndim == 1
            and keys.shape == docs.shape
            and keys.size == int(meta.get("num_postings", -1))
        )
        if not ok:
            raise IndexFormatError(
                f"verbatim index arrays at {d} do not match their metadata "
                f"(keys {keys.dtype}{keys.shape}, docs {docs.dtype}{docs.shape}); rebuild the index"
            )
        return cls(keys, docs, stop, meta)

    @property
    def num_docs(self) -> int:
        return self._n

    # ---------------------------------------------------------------- query side

    def query_shingles(self, query: str) -> np.ndarray:
        """Distinct shingle hashes of ``query`` that a search considers (see module docstring)."""
        sh = _shingles(verbatim_tokens(normalize_text(_check_query(query))), self.n)
        if sh.size == 0:
            return sh
        uniq, first = np.unique(sh, return_index=True)
        if self._stop.size:
            pos = np.minimum(np.searchsorted(self._stop, uniq), self._stop.size - 1)
            keep = self._stop[pos] != uniq
            uniq, first = uniq[keep], first[keep]
        if uniq.size > MAX_QUERY_SHINGLES:
            by_pos = np.argsort(first, kind="stable")
            pick = np.linspace(0, uniq.size - 1, MAX_QUERY_SHINGLES).round().astype(np.int64)
            uniq = uniq[by_pos[pick]]
        return uniq

    def _counts(self, query: str) -> tuple[np.ndarray, np.ndarray, int]:
        """``(rows, matched shingle counts, number of query shingles considered)``."""
        qh = self.query_shingles(query)
        empty = np.zeros(0, dtype=np.int64)
        if qh.size == 0 or self._keys.size == 0:
            return empty, empty, int(qh.size)
        left = np.searchsorted(self._keys, qh, side="left")
        right = np.searchsorted(self._keys, qh, side="right")
        lens = right - left
        hit = lens > 0
        if not hit.any():
            return empty, empty, int(qh.size)
        left, lens = left[hit], lens[hit]
        total = int(lens.sum())
        offsets = np.repeat(left - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
        idx = offsets + np.arange(total, dtype=np.int64)
        docs = np.asarray(self._docs[idx], dtype=np.int64)
        rows, counts = np.unique(docs, return_counts=True)
        return rows, counts, int(qh.size)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by shingle coverage: ``(coverage float32, rows int64)``, best first.

        Coverage is the fraction of the query's considered distinct shingles found in the row.
        Rows with zero coverage are not returned.
        """
        k = _check_k(k)
        rows, counts, q = self._counts(query)
        if rows.size == 0:
            return np.zeros(0, dtype=np.float32), rows
        return rank_sparse(rows, counts / q, k)

    def coverage_rows(self, query: str, rows: np.ndarray) -> np.ndarray:
        """Coverage (float32) of ``query`` in each of ``rows``."""
        rows = _check_rows(rows, self._n)
        out = np.zeros(rows.shape, dtype=np.float32)
        hit_rows, counts, q = self._counts(query)
        if hit_rows.size == 0 or rows.size == 0:
            return out
        pos = np.minimum(np.searchsorted(hit_rows, rows), hit_rows.size - 1)
        match = hit_rows[pos] == rows
        out[match] = counts[pos[match]] / q
        return out

    def __repr__(self) -> str:
        return f"VerbatimIndex(num_docs={self._n}, n={self.n}, postings={self._keys.size})"


# ------------------------------------------------------------------------------------------------
# Shared spans
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A passage shared by a query and a source, as offsets into the original strings.

    ``text`` is ``source[source_start:source_end]``.
    """

    query_start: int
    query_end: int
    source_start: int
    source_end: int
    text: str


@dataclass(frozen=True)
class _Prepared:
    norm: str
    orig_start: np.ndarray
    orig_end: np.ndarray
    tokens: list[str]
    tok_start: np.ndarray
    tok_end: np.ndarray


@lru_cache(maxsize=16)
def _prepare(text: str) -> _Prepared:
    norm, starts, ends = normalize_with_bounds(text)
    toks, ts, te = token_spans(norm)
    return _Prepared(norm, starts, ends, toks, ts, te)


# An anchor (token pair) occurring more often than this in the source is not used to seed matches.
_MAX_ANCHOR_HITS = 64
# Upper bound on token comparisons spent extending matches, per call.
_MAX_EXTEND_STEPS = 2_000_000


def _extend_punct(a: str, b: str, i: int, j: int, step: int) -> int:
    """How many equal non-alphanumeric characters follow (step=1) or precede (step=-1)."""
    k = 0
    while True:
        x, y = (i + k, j + k) if step == 1 else (i - k - 1, j - k - 1)
        if x < 0 or y < 0 or x >= len(a) or y >= len(b):
            return k
        c = a[x]
        if c != b[y] or c.isalnum():
            return k
        k += 1


def find_spans(query: str, source: str, *, min_chars: int = 20, max_spans: int = 20) -> list[Span]:
    """Longest passages shared by ``query`` and ``source``, longest first.

    Both texts are normalised and tokenised as for the verbatim index; maximal runs of equal
    tokens are found from token-pair anchors, extended over identical punctuation at both ends,
    and kept when the normalised source passage is at least ``min_chars`` characters long.
    Spans are selected greedily by length and do not overlap in either text. Offsets are into
    the original strings. Cost is linear in the two token counts for ordinary text; a token pair
    that repeats more than 64 times in the source is not used as an anchor, which bounds the
    work on degenerate repetitive input.
    """
    _check_query(query)
    if not isinstance(source, str):
        raise InputError(f"source must be str, got {type(source).__name__}")
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 1:
        raise InputError(f"min_chars must be a positive integer, got {min_chars!r}")
    if isinstance(max_spans, bool) or not isinstance(max_spans, int) or max_spans < 1:
        raise InputError(f"max_spans must be a positive integer, got {max_spans!r}")
    q = _prepare(query)
    s = _prepare(source)
    qt, st = q.tokens, s.tokens
    if not qt or not st:
        return []
    anchors: dict[tuple[str, str], list[int]] = {}
    for j in range(len(st) - 1):
        anchors.setdefault((st[j], st[j + 1]), []).append(j)
    long_tokens: dict[str, list[int]] = {}
    for j, tok in enumerate(st):
        if len(tok) >= min_chars:
            long_tokens.setdefault(tok, []).append(j)

    covered: dict[int, int] = {}
    matches: list[tuple[int, int, int]] = []  # (query token, source token, length in tokens)
    steps = 0
    nq, ns = len(qt), len(st)
    for i in range(nq):
        hits = anchors.get((qt[i], qt[i + 1])) if i + 1 < nq else None
        if long_tokens and len(qt[i]) >= min_chars:
            extra = long_tokens.get(qt[i])
            if extra:
                hits = (hits or []) + extra
        if not hits or len(hits) > _MAX_ANCHOR_HITS:
            continue
        for j in hits:
            d = i - j
            if covered.get(d, -1) > i:
                continue
            length = 1
            while i + length < nq and j + length < ns and qt[i + length] == st[j + length]:
                length += 1
            steps += length
            covered[d] = i + length
            matches.append((i, j, length))
        if steps > _MAX_EXTEND_STEPS:
            logger.warning("find_spans stopped early after %d token comparisons", steps)
            break

    candidates = []
    for i, j, length in matches:
        qa, qb = int(q.tok_start[i]), int(q.tok_end[i + length - 1])
        sa, sb = int(s.tok_start[j]), int(s.tok_end[j + length - 1])
        back = _extend_punct(q.norm, s.norm, qa, sa, -1)
        fwd = _extend_punct(q.norm, s.norm, qb, sb, 1)
        qa, sa, qb, sb = qa - back, sa - back, qb + fwd, sb + fwd
        while qa < qb and s.norm[sa] == " ":
            qa, sa = qa + 1, sa + 1
        while qa < qb and s.norm[sb - 1] == " ":
            qb, sb = qb - 1, sb - 1
        if sb - sa >= min_chars:
            candidates.append((sb - sa, qa, qb, sa, sb))
    candidates.sort(key=lambda c: (-c[0], c[1]))

    chosen: list[tuple[int, int, int, int]] = []  # normalised (qa, qb, sa, sb)
    spans: list[Span] = []
    for _, qa, qb, sa, sb in candidates:
        if any((qa < cqb and cqa < qb) or (sa < csb and csa < sb) for cqa, cqb, csa, csb in chosen):
            continue
        chosen.append((qa, qb, sa, sb))
        o_sa, o_sb = int(s.orig_start[sa]), int(s.orig_end[sb - 1])
        spans.append(
            Span(
                query_start=int(q.orig_start[qa]),
                query_end=int(q.orig_end[qb - 1]),
                source_start=o_sa,
                source_end=o_sb,
                text=source[o_sa:o_sb],
            )
        )
        if len(spans) >= max_spans:
            break
    spans.sort(key=lambda sp: (-(sp.source_end - sp.source_start), sp.query_start))
    return spans
