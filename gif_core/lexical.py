"""Lexical evidence channel: Okapi BM25 over normalised word tokens (bm25s storage).

Corpus and query are tokenised with :func:`gif_core.normalize.tokenize`, so the same
normalisation (NFKC, confusable folding, case folding) applies on both sides and Chinese /
Japanese text is indexed as character unigrams and bigrams.

Scoring is Lucene BM25 (``k1 = 1.5``, ``b = 0.75``) with each *distinct* query term counted once::

    score(q, d) = sum_{t in terms(q)} idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

Bounded query cost: a query contributes at most :data:`MAX_QUERY_TERMS` distinct known terms,
the rarest ones (highest idf, ties broken by vocabulary id). A 100,000-character paste therefore
touches at most 256 posting lists, and rare terms have short lists.

Bounded build memory (:meth:`LexicalIndex.build_to`): texts are read from any iterable, a batch
at a time; their postings ``(term, row, tf)`` are buffered up to :data:`RUN_POSTINGS`, sorted by
term and written to a scratch *run* file. Once every text is read, N, the average length and
each term's document frequency are known, and the runs are merged a block of terms at a time
(at most :data:`MERGE_POSTINGS` postings per block; a longer posting list is copied run by run,
the runs holding consecutive rows) into the one BM25 index on disk, each posting's score
computed with those global statistics. What stays in memory besides the fixed
buffers is the vocabulary (which a query needs anyway), the document frequencies and 4 bytes of
document length per sample. The files are those :meth:`LexicalIndex.build` writes through bm25s,
with the same scores to the last bit, so :meth:`LexicalIndex.load` memory-maps either. (Term ids
differ: bm25s numbers terms in set order, the streaming build in order of first occurrence.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from gif_core.errors import IndexFormatError, InputError
from gif_core.normalize import tokenize
from gif_core.store import read_component_meta

logger = logging.getLogger(__name__)

__all__ = ["LexicalIndex", "MAX_QUERY_TERMS", "rank_sparse", "nbytes_on_disk"]

MAX_QUERY_TERMS = 256
FORMAT_VERSION = 1
K1 = 1.5
B = 0.75
BATCH_TEXTS = 4096
"""Texts tokenised (or shingled) together by the streaming builds."""
RUN_POSTINGS = 1_000_000
"""Postings buffered before a sorted run is written (12 bytes each: about 12 MB)."""
MERGE_POSTINGS = 1_000_000
"""Postings merged at a time from all runs (a single longer posting list is merged alone)."""

_META_NAME = "gif_lexical.json"
_BM25S_FILES = (
    "data.csc.index.npy",
    "indices.csc.index.npy",
    "indptr.csc.index.npy",
    "vocab.index.json",
    "params.index.json",
)


def rank_sparse(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of parallel ``(rows, scores)`` with ``scores > 0``: best first, ties by row.

    Returns ``(scores float32, rows int64)``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    pos = scores > 0
    if not pos.all():
        rows, scores = rows[pos], scores[pos]
    if rows.size > k:
        part = np.argpartition(-scores, k - 1)[:k]
        # keep every row tied with the k-th score so the tie-break by row is exact
        kth = scores[part].min()
        part = np.flatnonzero(scores >= kth)
        rows, scores = rows[part], scores[part]
    order = np.lexsort((rows, -scores))[:k]
    return scores[order].astype(np.float32), rows[order]


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}; pass e.g. k=10")
    return int(k)


def _check_query(query: object) -> str:
    if not isinstance(query, str):
        raise InputError(
            f"query must be str, got {type(query).__name__}; decode bytes with .decode('utf-8')"
        )
    return query


def _check_rows(rows: object, n: int) -> np.ndarray:
    """Row positions as an array; each must be an integer in [0, n)."""
    rows = np.asarray(rows)
    if rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0
                      or rows.max() >= n):
        raise InputError(f"rows must be integers in [0, {n}); got dtype {rows.dtype} "
                         f"and range [{rows.min()}, {rows.max()}]")
    return rows


def _check_texts(texts: object) -> Sequence[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InputError(
            f"texts must be a sequence of str, got {type(texts).__name__}; pass a list of strings"
        )
    if len(texts) == 0:
        raise InputError("texts is empty; an index needs at least one sample text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(
                f"texts[{i}] must be str, got {type(t).__name__}; convert every sample to text"
            )
    return texts


def nbytes_on_disk(directory: str | Path) -> int:
    """Bytes used by the lexical index files in ``directory``."""
    d = Path(directory)
    return sum(
        (d / name).stat().st_size for name in (*_BM25S_FILES, _META_NAME) if (d / name).exists()
    )


def _batches(texts: Iterable[str], size: int = BATCH_TEXTS) -> Iterator[list[str]]:
    """Lists of at most ``size`` texts from any iterable; each item must be a str."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise InputError(
            f"texts must be an iterable of str, got {type(texts).__name__}; pass a list of strings"
        )
    batch: list[str] = []
    row = 0
    for t in texts:
        if not isinstance(t, str):
            raise InputError(
                f"texts[{row}] must be str, got {type(t).__name__}; convert every sample to text"
            )
        batch.append(t)
        row += 1
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
    if row == 0:
        raise InputError("texts is empty; an index needs at least one sample text")


class NpyAppender:
    """A 1-D ``.npy`` file written front to back with plain writes (no memory map, so the pages
    written do not count in the writer's resident memory); the length goes into the header when
    the file is closed. The header is padded to a fixed 128 bytes so it can be rewritten."""

    HEADER = 128

    def __init__(self, path: Path, dtype: np.dtype | str) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._fh = self.path.open("wb")
        self._fh.write(self._header(0))

    def _header(self, count: int) -> bytes:
        from numpy.lib import format as npformat

        text = (f"{{'descr': {npformat.dtype_to_descr(self.dtype)!r}, 'fortran_order': False, "
                f"'shape': ({count},), }}")
        body = text.encode("latin1").ljust(self.HEADER - 10 - 1) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self._fh.write(arr.tobytes())
        self.count += arr.size

    def close(self) -> None:
        self._fh.seek(0)
        self._fh.write(self._header(self.count))
        self._fh.close()


def read_slice(path: Path, dtype: np.dtype | str, start: int, stop: int,
               header: int = 0) -> np.ndarray:
    """Items ``[start, stop)`` of a raw array file, read with a plain read (not a memory map)."""
    dtype = np.dtype(dtype)
    if stop <= start:
        return np.zeros(0, dtype=dtype)
    with open(path, "rb") as fh:
        fh.seek(header + start * dtype.itemsize)
        return np.fromfile(fh, dtype=dtype, count=stop - start)


class Scratch:
    """Scratch folder of a streaming build inside its target directory, removed on exit (also
    when the build fails, which leaves any index already in the directory as it was)."""

    def __init__(self, directory: Path, label: str) -> None:
        self.path = Path(directory) / f".building-{label}"

    def __enter__(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)  # left by a build that was killed
        self.path.mkdir()
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def install(directory: Path, files: dict[str, Path], meta_name: str, meta: dict) -> None:
    """Move finished files into ``directory``; the metadata goes first out and last in, so a
    crash half-way leaves a folder that :func:`read_component_meta` refuses ("rebuild")."""
    d = Path(directory)
    (d / meta_name).unlink(missing_ok=True)
    for name, src in files.items():
        os.replace(src, d / name)
    tmp = d / f".{meta_name}.tmp"
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp, d / meta_name)


def plan_blocks(counts: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive ``[a, b)`` ranges of ``counts`` whose sums stay within ``limit`` (a single
    item over the limit is a block of its own)."""
    blocks: list[tuple[int, int]] = []
    if counts.size == 0:
        return blocks
    cum = np.cumsum(counts, dtype=np.int64)
    a = 0
    while a < counts.size:
        base = cum[a - 1] if a else 0
        b = int(np.searchsorted(cum, base + limit, side="right"))
        b = max(b, a + 1)
        blocks.append((a, b))
        a = b
    return blocks


def _norms(lengths: np.ndarray, avgdl: float) -> np.ndarray:
    """BM25 length normalisation per document, with bm25s's operations in its order."""
    return K1 * ((1 - B) + B * lengths.astype(np.float64) / np.float64(avgdl))


def _idf(df: np.ndarray, n: int) -> np.ndarray:
    """Lucene idf per term, rounded to float32 as bm25s stores it."""
    df = df.astype(np.float64)
    return np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)


class LexicalIndex:
    """BM25 index over a corpus; rows are corpus positions ``0 .. num_docs - 1``."""

    def __init__(self, bm25: object, meta: dict) -> None:
        self._bm25 = bm25
        self._meta = meta
        scores = bm25.scores  # type: ignore[attr-defined]
        self._data = scores["data"]
        self._indices = scores["indices"]
        self._indptr = scores["indptr"]
        self._vocab: dict[str, int] = bm25.vocab_dict  # type: ignore[attr-defined]
        self._n = int(meta["num_docs"])
        self._avgdl = float(meta["avgdl"])

    # ---------------------------------------------------------------- build / io

    @classmethod
    def build(cls, texts: Sequence[str], *, show_progress: bool = False) -> LexicalIndex:
        """Tokenise and index ``texts`` in memory (all token lists at once); :meth:`build_to`
        does the same in bounded memory. Raises :class:`InputError` for an empty corpus."""
        import bm25s
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG

        texts = _check_texts(texts)
        token_lists = [tokenize(t) for t in texts]
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        if lengths.sum() == 0:
            raise InputError(
                "no text in the corpus contains a word token; check that the text field is set "
                "to the column holding the sample text"
            )
        bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
        bm25.index(token_lists, show_progress=show_progress, leave_progress=False)
        meta = {
            "format": "gif-lexical",
            "format_version": FORMAT_VERSION,
            "num_docs": len(texts),
            "avgdl": float(lengths.mean()),
            "k1": K1,
            "b": B,
            "max_query_terms": MAX_QUERY_TERMS,
        }
        logger.info(
            "lexical index: %d docs, %d terms, %d postings",
            len(texts),
            len(bm25.vocab_dict),
            int(bm25.scores["data"].shape[0]),
        )
        return cls(bm25, meta)

    @classmethod
    def build_to(cls, directory: str | Path, texts: Iterable[str], *,
                 run_postings: int = RUN_POSTINGS,
                 merge_postings: int = MERGE_POSTINGS) -> LexicalIndex:
        """Index ``texts`` (any iterable, read once) into the existing ``directory`` in bounded
        memory (see the module docstring) and open the result memory-mapped.

        Same files, scores and rankings as ``build(texts).save(directory)``. An index already in
        ``directory`` stays usable until the new one is complete; if the build fails (bad
        input, interruption) it is left as it was.
        """
        import bm25s

        d = Path(directory)
        if not d.is_dir():
            raise InputError(f"{d} is not a directory; create it before building the lexical "
                             f"index")
        vocab: dict[str, int] = {}
        df = np.zeros(0, dtype=np.int64)
        lengths: list[np.ndarray] = []
        with Scratch(d, "lexical") as scratch:
            runs: list[tuple[Path, Path, int]] = []
            buf_keys: list[np.ndarray] = []
            buf_tf: list[np.ndarray] = []
            buffered = 0

            def flush() -> None:
                nonlocal buffered
                if not buffered:
                    return
                keys = np.concatenate(buf_keys)
                tf = np.concatenate(buf_tf)
                buf_keys.clear()
                buf_tf.clear()
                order = np.argsort(keys)  # (term << 32 | row) is unique per posting
                kp, tp = scratch / f"run{len(runs)}.keys", scratch / f"run{len(runs)}.tf"
                keys[order].tofile(kp)
                tf[order].tofile(tp)
                runs.append((kp, tp, int(keys.size)))
                buffered = 0

            row = 0
            for batch in _batches(texts):
                docs, tids = [], []
                lens = np.zeros(len(batch), dtype=np.uint32)
                for j, text in enumerate(batch):
                    toks = tokenize(text)
                    lens[j] = len(toks)
                    tids.extend(vocab.setdefault(t, len(vocab)) for t in toks)
                    docs.extend([row + j] * len(toks))
                lengths.append(lens)
                row += len(batch)
                if not tids:
                    continue
                packed = (np.asarray(tids, dtype=np.uint64) << np.uint64(32)) | np.asarray(
                    docs, dtype=np.uint64)
                keys, tf = np.unique(packed, return_counts=True)
                if df.size < len(vocab):
                    df = np.concatenate([df, np.zeros(max(len(vocab) - df.size, df.size),
                                                      dtype=np.int64)])
                df += np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=df.size)
                buf_keys.append(keys)
                buf_tf.append(tf.astype(np.uint32))
                buffered += keys.size
                if buffered >= run_postings:
                    flush()
            flush()
            num = row
            dl = np.concatenate(lengths)
            del lengths
            total = int(dl.sum(dtype=np.int64))
            if total == 0:
                raise InputError(
                    "no text in the corpus contains a word token; check that the text field is "
                    "set to the column holding the sample text"
                )
            if num >= 2 ** 31:
                raise InputError(f"{num:,} samples exceed the lexical index's 2^31 rows")
            df = df[:len(vocab)]
            avgdl = total / num
            idf = _idf(df, num)

            data = NpyAppender(scratch / "data.csc.index.npy", np.float32)
            indices = NpyAppender(scratch / "indices.csc.index.npy", np.int32)
            cursors = [0] * len(runs)

            def emit(keys: np.ndarray, tf: np.ndarray) -> None:
                """Score and write postings sorted by (term, row)."""
                tid = (keys >> np.uint64(32)).astype(np.int64)
                doc = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
                tf = tf.astype(np.float32)
                # bm25s: idf (float32) * tf / (norm (float64) + tf (float32)), stored as float32
                norms = _norms(dl[doc], avgdl)
                data.write((idf[tid] * (tf / (norms + tf))).astype(np.float32))
                indices.write(doc.astype(np.int32))

            for a, b in plan_blocks(df, merge_postings):
                ends = []
                for kp, _, size in runs:
                    # the run's postings of terms [a, b) end at the first key of term b; the map
                    # is opened per block so the pages the search touches do not add up
                    if b >= len(vocab):
                        ends.append(size)
                    else:
                        keys_map = np.memmap(kp, dtype=np.uint64, mode="r")
                        ends.append(int(np.searchsorted(keys_map, np.uint64(b) << np.uint64(32))))
                        del keys_map
                if b - a == 1:
                    # one term (its list may be longer than a block): runs hold consecutive rows,
                    # so its postings are already in row order run after run
                    for r, (kp, tp, _) in enumerate(runs):
                        if ends[r] > cursors[r]:
                            emit(read_slice(kp, np.uint64, cursors[r], ends[r]),
                                 read_slice(tp, np.uint32, cursors[r], ends[r]))
                        cursors[r] = ends[r]
                    continue
                parts_k, parts_t = [], []
                for r, (kp, tp, _) in enumerate(runs):
                    if ends[r] > cursors[r]:
                        parts_k.append(read_slice(kp, np.uint64, cursors[r], ends[r]))
                        parts_t.append(read_slice(tp, np.uint32, cursors[r], ends[r]))
                    cursors[r] = ends[r]
                keys = np.concatenate(parts_k)
                tf = np.concatenate(parts_t)
                del parts_k, parts_t
                order = np.argsort(keys)
                emit(keys[order], tf[order])
                del keys, tf, order
            data.close()
            indices.close()
            indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
            np.cumsum(df, out=indptr[1:])
            if indices.count != int(indptr[-1]):  # pragma: no cover - an internal invariant
                raise RuntimeError(f"lexical merge wrote {indices.count} postings of "
                                   f"{int(indptr[-1])}")
            np.save(scratch / "indptr.csc.index.npy", indptr, allow_pickle=False)
            n_terms = len(vocab)
            # bm25s adds an empty token after the vocabulary (no postings); kept for parity
            vocab.setdefault("", n_terms)
            (scratch / "vocab.index.json").write_text(json.dumps(vocab, ensure_ascii=False),
                                                      encoding="utf-8")
            del vocab
            ref = bm25s.BM25(k1=K1, b=B, method="lucene")
            params = {"k1": ref.k1, "b": ref.b, "delta": ref.delta, "method": ref.method,
                      "idf_method": ref.idf_method, "dtype": ref.dtype,
                      "int_dtype": ref.int_dtype, "num_docs": num,
                      "version": bm25s.__version__, "backend": ref.backend}
            (scratch / "params.index.json").write_text(json.dumps(params, indent=4))
            meta = {"format": "gif-lexical", "format_version": FORMAT_VERSION, "num_docs": num,
                    "avgdl": float(avgdl), "k1": K1, "b": B, "max_query_terms": MAX_QUERY_TERMS}
            install(d, {name: scratch / name for name in _BM25S_FILES}, _META_NAME, meta)
        logger.info("lexical index: %d docs, %d terms, %d postings (%d runs)", num, n_terms,
                    int(indptr[-1]), len(runs))
        return cls.load(d)

    def save(self, directory: str | Path) -> None:
        """Write the index files into the existing ``directory``."""
        d = Path(directory)
        if not d.is_dir():
            raise InputError(f"{d} is not a directory; create it before saving the lexical index")
        self._bm25.save(str(d), show_progress=False)  # type: ignore[attr-defined]
        (d / _META_NAME).write_text(json.dumps(self._meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> LexicalIndex:
        """Open an index written by :meth:`save`; posting arrays are memory-mapped by default."""
        import bm25s
        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG

        d = Path(directory)
        meta = read_component_meta(d, _META_NAME, "gif-lexical", FORMAT_VERSION, _BM25S_FILES,
                                   "lexical")
        try:
            bm25 = bm25s.BM25.load(str(d), mmap=bool(mmap), load_corpus=False, show_progress=False)
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFormatError(f"lexical index at {d} is corrupt ({exc}); rebuild it") from exc
        if int(bm25.scores["num_docs"]) != int(meta["num_docs"]):
            raise IndexFormatError(
                f"lexical index at {d} has {bm25.scores['num_docs']} docs but its metadata says "
                f"{meta['num_docs']}; the directory mixes two builds, rebuild it"
            )
        return cls(bm25, meta)

    @property
    def num_docs(self) -> int:
        return self._n

    # ---------------------------------------------------------------- query side

    def _query_terms(self, query: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Known distinct query terms kept for scoring.

        Returns ``(term_ids, query_tf, df, query_length)``; at most :data:`MAX_QUERY_TERMS`
        terms, the rarest in the corpus.
        """
        tokens = tokenize(_check_query(query))
        counts = Counter(tokens)
        ids, tfs = [], []
        for tok, c in counts.items():
            tid = self._vocab.get(tok)
            if tid is not None:
                ids.append(tid)
                tfs.append(c)
        if not ids:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, len(tokens)
        tid = np.asarray(ids, dtype=np.int64)
        qtf = np.asarray(tfs, dtype=np.int64)
        df = np.asarray(self._indptr[tid + 1], dtype=np.int64) - np.asarray(
            self._indptr[tid], dtype=np.int64
        )
        keep = df > 0
        tid, qtf, df = tid[keep], qtf[keep], df[keep]
        if tid.size > MAX_QUERY_TERMS:
            order = np.lexsort((tid, df))[:MAX_QUERY_TERMS]
            tid, qtf, df = tid[order], qtf[order], df[order]
        return tid, qtf, df, len(tokens)

    def _accumulate(self, tid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sparse BM25 sums over the posting lists of ``tid``: ``(rows, scores)``."""
        if tid.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        starts = np.asarray(self._indptr[tid], dtype=np.int64)
        ends = np.asarray(self._indptr[tid + 1], dtype=np.int64)
        docs = np.concatenate([self._indices[s:e] for s, e in zip(starts, ends, strict=True)])
        vals = np.concatenate([self._data[s:e] for s, e in zip(starts, ends, strict=True)])
        if docs.size * 4 < self._n:
            rows, inv = np.unique(docs, return_inverse=True)
            return rows.astype(np.int64), np.bincount(inv, weights=vals)
        dense = np.bincount(docs, weights=vals, minlength=self._n)
        rows = np.flatnonzero(dense)
        return rows.astype(np.int64), dense[rows]

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by BM25: ``(scores float32, rows int64)``, best first.

        Rows with no shared term are never returned, so fewer than ``k`` may come back; a query
        without any corpus term returns two empty arrays.
        """
        k = _check_k(k)
        tid, _, _, _ = self._query_terms(query)
        rows, scores = self._accumulate(tid)
        return rank_sparse(rows, scores, k)

    def score_rows(self, query: str, rows: np.ndarray) -> np.ndarray:
        """BM25 score (float32) of ``query`` against each of ``rows`` (0 where nothing is shared)."""
        rows = _check_rows(rows, self._n)
        out = np.zeros(rows.shape, dtype=np.float32)
        tid, _, _, _ = self._query_terms(query)
        if tid.size == 0 or rows.size == 0:
            return out
        hit_rows, hit_scores = self._accumulate(tid)
        if hit_rows.size == 0:
            return out
        pos = np.minimum(np.searchsorted(hit_rows, rows), hit_rows.size - 1)
        match = hit_rows[pos] == rows
        out[match] = hit_scores[pos[match]]
        return out

    def max_score(self, query: str) -> float:
        """Normalising constant for :meth:`search` scores: the query's self-score.

        It is the BM25 score the query would get against a corpus sample identical to itself
        (same terms, same term frequencies, same length), using the corpus idf and average
        length and the same capped term set as :meth:`search`. An exact copy of a sample scores
        ``max_score`` (up to float32 rounding), so ``score / max_score`` is 1.0 for an exact copy.
        It is not a strict bound: a sample much shorter than the query that repeats its rare
        terms can exceed it, so clip the ratio to [0, 1]. Returns 0.0 when no query term is in
        the corpus.
        """
        tid, qtf, df, qlen = self._query_terms(query)
        if tid.size == 0:
            return 0.0
        n = float(self._n)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = K1 * (1.0 - B + B * qlen / self._avgdl)
        tf = qtf.astype(np.float64)
        return float(np.sum(idf * tf / (tf + norm)))

    def __repr__(self) -> str:
        return f"LexicalIndex(num_docs={self._n}, terms={len(self._vocab)})"
