"""Text normalisation and tokenisation shared by the lexical and verbatim channels.

Both index build and query go through :func:`normalize_text`, so a sample and a pasted copy of it
reduce to the same string even when the copy went through a word processor, a chat UI or a
homoglyph substitution. The pipeline, applied character-cluster by character-cluster:

1. Unicode NFKC (fullwidth forms, ligatures, math alphanumerics, compatibility spaces, ``…``).
2. Confusable folding: Cyrillic / Greek / Latin-extended look-alikes of Latin letters are mapped to
   the Latin letter they imitate; curly quotes, primes and guillemets become ``'`` or ``"``; the
   dash family and the minus sign become ``-``; zero-width and other invisible characters
   (ZWSP, ZWJ, ZWNJ, word joiner, BOM, soft hyphen, ...) are removed. Digit/letter OCR confusions
   (``0``/``O``, ``1``/``l``) are deliberately *not* folded: they change meaning.
3. Full Unicode case folding (``str.casefold``), then step 2 again (case folding can produce new
   look-alikes, e.g. Cyrillic ``Ԁ`` -> ``ԁ``).
4. Every whitespace run becomes one ASCII space; leading and trailing whitespace is removed.

:func:`normalize_with_offsets` returns the same string plus, for every normalised character, the
offset of the original character cluster it came from, so a span found in normalised text maps
back to an exact slice of the original text.

:func:`tokenize` splits normalised text into word tokens (runs of letters, digits and combining
marks, any script). Scripts written without spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer,
Myanmar, Tibetan, Yi, Bopomofo) are emitted as character unigrams *and* bigrams, so an exact copy of
Chinese or Japanese text shares many terms with its source. :func:`verbatim_tokens` and
:func:`token_spans` give the positional stream used by the verbatim channel, where those scripts
contribute one token per character.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "normalize_text",
    "normalize_with_offsets",
    "normalize_with_bounds",
    "tokenize",
    "tokenize_normalized",
    "verbatim_tokens",
    "token_spans",
]

# --------------------------------------------------------------------------------------------
# Confusables
# --------------------------------------------------------------------------------------------

# Look-alike -> Latin letter it imitates, as two aligned strings.
_LOOKALIKE_FROM = (
    "АВЕКМНОРСТХУЅІЈԚԜҮᎪ"  # Cyrillic (and one Cherokee) capitals
    "аеорсухѕіјԁһӏԛԝүкɡ"  # Cyrillic small, Latin script g
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"  # Greek capitals
    "αικνορυχ"  # Greek small
    "ıȷɑɩʟɪʀᴀ"  # Latin-extended and IPA
    "օսհո"  # Armenian
)
_LOOKALIKE_TO = "ABEKMHOPCTXYSIJQWYAaeopcyxsijdhlqwykgABEZHIKMNOPTYXaikvopuxijailiraouhn"
_QUOTE_FOLDS = {
    "'": "\u2018\u2019\u201a\u201b\u2032\u2035\u02bc\u02b9\uff07\u2039\u203a",
    '"': "\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb\u02ba\u300c\u300d",
    "-": "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d",
}
# Invisible characters, removed: zero-width space/joiners, direction marks and embeddings,
# word joiner, invisible operators, BOM, Mongolian vowel separator, grapheme joiner, soft hyphen.
_INVISIBLE = (
    "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u034f"
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u00ad"
)

_FOLD_TABLE: dict[int, str] = {
    ord(k): v for k, v in zip(_LOOKALIKE_FROM, _LOOKALIKE_TO, strict=True)
}
for _target, _sources in _QUOTE_FOLDS.items():
    _FOLD_TABLE.update({ord(k): _target for k in _sources})
_FOLD_TABLE.update({ord(k): "" for k in _INVISIBLE})
# No ASCII key may appear in the table: the ASCII fast path only lower-cases.
if any(k < 0x80 for k in _FOLD_TABLE):  # pragma: no cover - guards edits of the tables above
    raise RuntimeError("the confusable table must not remap ASCII characters")

_WS_RE = re.compile(r"\s+")


def _fold(s: str) -> str:
    """Steps 2-3 of the pipeline on an already NFKC-normalised string."""
    return s.translate(_FOLD_TABLE).casefold().translate(_FOLD_TABLE)


def normalize_text(text: str) -> str:
    """Return the normalised form of ``text`` (see the module docstring for the pipeline).

    Idempotent for practical text, and identical to ``normalize_with_offsets(text)[0]``.
    """
    if text.isascii():
        s = text.lower()
    else:
        s = _fold(unicodedata.normalize("NFKC", text))
    return _WS_RE.sub(" ", s).strip(" ")


# --------------------------------------------------------------------------------------------
# Offsets
# --------------------------------------------------------------------------------------------

_HANGUL_VT = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))


@lru_cache(maxsize=1)
def _composing_seconds() -> frozenset[int]:
    """Code points with combining class 0 that can still compose with the preceding starter."""
    out = set(_HANGUL_VT)
    for cp in range(0x80, 0x30000):
        dec = unicodedata.decomposition(chr(cp))
        if dec and not dec.startswith("<"):
            parts = dec.split()
            if len(parts) == 2:
                second = int(parts[1], 16)
                if unicodedata.combining(chr(second)) == 0:
                    out.add(second)
    return frozenset(out)


@lru_cache(maxsize=65536)
def _attaches(ch: str) -> bool:
    """True when ``ch`` can combine with what precedes it under NFKC (a non-starter cluster)."""
    first = unicodedata.normalize("NFKD", ch)[:1]
    if not first:
        return False
    return unicodedata.combining(first) != 0 or ord(first) in _composing_seconds()


_CHAR_CACHE: dict[str, str] = {}


def _norm_piece(seg: str) -> str:
    if len(seg) == 1:
        out = _CHAR_CACHE.get(seg)
        if out is None:
            out = _fold(unicodedata.normalize("NFKC", seg))
            if len(_CHAR_CACHE) < 200_000:
                _CHAR_CACHE[seg] = out
        return out
    return _fold(unicodedata.normalize("NFKC", seg))


def _segments_by_clusters(text: str, cps: np.ndarray) -> list[int]:
    """Start offsets of NFKC-independent clusters: a starter plus the characters that attach."""
    n = len(text)
    candidates = np.flatnonzero(cps[1:] >= 0x300) + 1
    attach = [int(p) for p in candidates if _attaches(text[p])]
    if not attach:
        return list(range(n))
    keep = np.ones(n, dtype=bool)
    keep[attach] = False
    return np.flatnonzero(keep).tolist()


def _segments_by_spaces(text: str) -> list[int]:
    """Coarse fallback clusters: whitespace-delimited chunks (whitespace attached to the left)."""
    starts = [0] + [m.end() for m in re.finditer(r"\s+", text) if 0 < m.end() < len(text)]
    return sorted(set(starts))


def _apply_segments(text: str, starts: list[int]) -> tuple[str, np.ndarray, np.ndarray]:
    n = len(text)
    bounds = starts + [n]
    if len(starts) == n:
        pieces = [_norm_piece(c) for c in text]
    else:
        pieces = [_norm_piece(text[bounds[i] : bounds[i + 1]]) for i in range(len(starts))]
    lens = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    b = np.asarray(bounds, dtype=np.int64)
    return "".join(pieces), np.repeat(b[:-1], lens), np.repeat(b[1:], lens)


def _code_points(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


_WS_CODEPOINTS = np.array([c for c in range(0x3100) if chr(c).isspace()], dtype=np.uint32)


def normalize_with_bounds(text: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Normalise ``text`` and return ``(normalised, orig_start, orig_end)``.

    ``orig_start`` has ``len(normalised) + 1`` int64 entries: ``orig_start[i]`` is the offset in
    ``text`` of the character cluster that produced normalised character ``i``; the last entry is
    ``len(text)``. ``orig_end`` has ``len(normalised)`` entries: the end offset of that cluster.
    A normalised span ``[a, b)`` (``b > a``) corresponds to ``text[orig_start[a]:orig_end[b - 1]]``,
    which excludes any removed characters (collapsed whitespace, zero-width characters) after it.
    """
    if not isinstance(text, str):
        from gif_core.errors import InputError

        raise InputError(
            f"text must be str, got {type(text).__name__}; decode bytes with .decode('utf-8') first"
        )
    n = len(text)
    if text.isascii():
        pre = text.lower()
        starts = np.arange(n, dtype=np.int64)
        ends = starts + 1
    else:
        expected = _fold(unicodedata.normalize("NFKC", text))
        cps = _code_points(text)
        pre, starts, ends = _apply_segments(text, _segments_by_clusters(text, cps))
        if pre != expected:
            logger.debug("cluster-wise normalisation differs from whole-text; using word chunks")
            pre, starts, ends = _apply_segments(text, _segments_by_spaces(text))
            if pre != expected:
                logger.warning("normalisation offsets are approximate for a %d-char text", n)
                pre = expected
                starts = np.zeros(len(pre), dtype=np.int64)
                ends = np.full(len(pre), n, dtype=np.int64)
    if not pre:
        return "", np.array([n], dtype=np.int64), np.zeros(0, dtype=np.int64)
    ws = np.isin(_code_points(pre), _WS_CODEPOINTS)
    if ws.any():
        prev_ws = np.concatenate(([True], ws[:-1]))  # leading whitespace is dropped entirely
        keep = ~ws | ~prev_ws
        # drop a trailing whitespace run completely
        nz = np.flatnonzero(~ws)
        if nz.size == 0:
            return "", np.array([n], dtype=np.int64), np.zeros(0, dtype=np.int64)
        keep[nz[-1] + 1 :] = False
        norm = _WS_RE.sub(" ", pre).strip(" ")
        starts = starts[keep]
        ends = ends[keep]
    else:
        norm = pre
    if len(norm) != len(starts):  # pragma: no cover - defensive, the two paths agree
        raise AssertionError("normalisation offset map has the wrong length")
    return norm, np.append(starts, n).astype(np.int64), ends.astype(np.int64)


def normalize_with_offsets(text: str) -> tuple[str, np.ndarray]:
    """Return ``(normalize_text(text), orig_start)``.

    ``orig_start`` is an int64 array of ``len(normalised) + 1`` entries mapping each normalised
    character index to the offset in ``text`` where the character cluster it came from begins;
    the last entry is ``len(text)``. For a normalised span ``[a, b)`` the original slice is
    ``text[orig_start[a]:orig_start[b]]`` (it may carry removed characters, such as a second
    space, that sit between the span and the next kept character); use
    :func:`normalize_with_bounds` for a tight end offset.
    """
    norm, starts, _ = normalize_with_bounds(text)
    return norm, starts


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------

# Scripts written without spaces between words.
_NOSPACE_RANGES = [
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi
    (0x3005, 0x3007),  # iteration mark, closing mark, ideographic zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3031, 0x3035),  # kana repeat marks
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31A0, 0x31BF),  # Bopomofo extended
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA000, 0xA4CF),  # Yi
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # halfwidth Katakana (NFKC maps most to fullwidth)
    (0x1B000, 0x1B16F),  # Kana supplement / extended
    (0x20000, 0x3134F),  # CJK extensions B-G
]


def _class_body(ranges: list[tuple[int, int]]) -> str:
    parts = []
    for lo, hi in ranges:
        parts.append(
            re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        )
    return "".join(parts)


def _mark_ranges() -> list[tuple[int, int]]:
    def in_nospace(cp: int) -> bool:
        return any(lo <= cp <= hi for lo, hi in _NOSPACE_RANGES)

    ranges: list[tuple[int, int]] = []
    for cp in range(0x300, 0x20000):
        if unicodedata.category(chr(cp))[0] == "M" and not in_nospace(cp):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return ranges


_NS = _class_body(_NOSPACE_RANGES)
_MARKS = _class_body(_mark_ranges())
# A word is a run of letters/digits (any script but the space-less ones) and combining marks.
# Most text has no combining mark after NFKC, and the mark-free pattern is several times faster,
# so each pattern has a mark-free twin used when the text has no mark.
_WORD = rf"(?:[^\W_{_NS}]|[{_MARKS}])+"
_WORD_PLAIN = rf"[^\W_{_NS}]+"
_NS_CHAR_RE = re.compile(rf"[{_NS}]")
_MARK_RE = re.compile(rf"[{_MARKS}]")
_WORD_RE = re.compile(_WORD)
_WORD_PLAIN_RE = re.compile(_WORD_PLAIN)
_ASCII_WORD_RE = re.compile(r"[a-z0-9]+")  # normalised ASCII text is lower-case
_MIXED_RE = re.compile(rf"([{_NS}]+)|({_WORD})")
_MIXED_PLAIN_RE = re.compile(rf"([{_NS}]+)|({_WORD_PLAIN})")
_VERBATIM_RE = re.compile(rf"[{_NS}]|{_WORD}")
_VERBATIM_PLAIN_RE = re.compile(rf"[{_NS}]|{_WORD_PLAIN}")


def _verbatim_pattern(norm: str) -> re.Pattern[str]:
    if norm.isascii():
        return _ASCII_WORD_RE
    # every combining mark and every space-less script lies at or above U+0300
    if max(norm) < "\u0300":
        return _WORD_PLAIN_RE
    return _VERBATIM_RE if _MARK_RE.search(norm) else _VERBATIM_PLAIN_RE


def tokenize_normalized(norm: str) -> list[str]:
    """:func:`tokenize` for text that is already the output of :func:`normalize_text`."""
    if norm.isascii():
        return _ASCII_WORD_RE.findall(norm)
    if max(norm) < "\u0300":
        return _WORD_PLAIN_RE.findall(norm)
    marks = _MARK_RE.search(norm) is not None
    if not _NS_CHAR_RE.search(norm):
        return (_WORD_RE if marks else _WORD_PLAIN_RE).findall(norm)
    out: list[str] = []
    for run, word in (_MIXED_RE if marks else _MIXED_PLAIN_RE).findall(norm):
        if word:
            out.append(word)
        else:
            out.extend(run)
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


def tokenize(text: str) -> list[str]:
    """Word tokens of ``normalize_text(text)``.

    Letters, digits and combining marks of any script form words; punctuation, symbols and
    underscores separate them. Runs of space-less scripts (Han, Kana, Thai, ...) yield each
    character and each pair of adjacent characters as tokens.
    """
    return tokenize_normalized(normalize_text(text))


def verbatim_tokens(norm: str) -> list[str]:
    """Positional token stream of normalised text: words, and single characters of space-less
    scripts (so an n-gram of them is an n-character window)."""
    return _verbatim_pattern(norm).findall(norm)


def token_spans(norm: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """:func:`verbatim_tokens` with the ``[start, end)`` of each token in ``norm``."""
    toks: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for m in _verbatim_pattern(norm).finditer(norm):
        toks.append(m.group())
        starts.append(m.start())
        ends.append(m.end())
    return toks, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
