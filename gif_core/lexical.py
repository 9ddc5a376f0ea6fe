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
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
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
        """Tokenise and index ``texts``. Raises :class:`InputError` for an empty corpus."""
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
