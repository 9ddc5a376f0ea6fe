"""Planted-provenance queries: perturbed copies of known training samples, and query files.

An evaluation query is a piece of text (or an image) together with the ids of the training samples
it was made from. :func:`generate_queries` picks source samples deterministically and applies one
of the perturbations registered in :data:`KINDS`; :func:`generate_out_of_corpus` makes queries
whose answer is "none of the index" from held-out texts. Queries are stored as JSON Lines with
:func:`write_queries` and read back, strictly validated, with :func:`read_queries`.

Every perturbation is a pure function ``fn(text, rng, **params) -> str`` of its input text and a
``numpy.random.Generator``; the same seed always gives the same output. Parameters and their
defaults are documented on each function.

Kinds
-----
``exact``             the text unchanged.
``typos``             3-5 % of words get one character edit (swap, insert, delete, substitute).
``word_drop``         15 % of words dropped, then 2 % of the remaining words get a typo.
``prefix``            the first 30-60 % of the words (at least 8), a true string prefix.
``sentence_shuffle``  the sentences in a different order.
``synonym``           25 % of content words swapped for a single-word WordNet synonym.
``chatty``            the text, or a span of its sentences, wrapped in assistant-style prose.
``ocr``               OCR-like confusions (rn/m, l/1, O/0, e/c, cl/d, dropped spaces), 5 % of chars.
``paraphrase``        rewritten by a small language model (:mod:`gif_core.paraphrase`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gif_core.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "Query",
    "WordNet",
    "generate_out_of_corpus",
    "generate_queries",
    "perturb",
    "read_queries",
    "split_sentences",
    "write_queries",
]


@dataclass
class Query:
    """One evaluation query: its text or image, and the training samples it came from.

    ``source_ids`` is empty for a query that should match nothing in the index
    (kind ``out_of_corpus``). Exactly one of ``text`` and ``image`` (a file path) is set.
    """

    qid: str
    text: str | None
    source_ids: list[str]
    kind: str
    image: str | None = None
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Tokenisation helpers
# --------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\S+")
_ALPHA_RE = re.compile(r"[A-Za-z]")
# A sentence ends with . ! or ? (optionally followed by closing quotes/brackets), then
# whitespace, then something that looks like the start of a sentence.
_SENT_SPLIT_RE = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Words ending in a period that usually do not end a sentence.
_NO_SPLIT_BEFORE_RE = re.compile(
    r"(?:(?<![\w.])[A-Z]\.|(?<![\w.])(?:[A-Za-z]\.){2,}|\b(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Mt|"
    r"vs|etc|No|Vol|Gen|Col|Lt|Sgt|Capt|Rev|Fr|ca|approx|Inc|Ltd|Co)\.)$"
)


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences at ``. ! ?`` followed by whitespace and a capital or digit.

    A rule-based splitter: no split after a single-letter initial ("J."), a dotted abbreviation
    ("U.S.") or a common title/abbreviation ("Dr.", "St.", "etc."), so a sentence that really ends
    in one of them is merged with the next. Whitespace inside sentences is kept; the whitespace
    between sentences is dropped.
    """
    parts = []
    start = 0
    for m in _SENT_SPLIT_RE.finditer(text):
        if _NO_SPLIT_BEFORE_RE.search(text, 0, m.start()):
            continue  # an initial ("Herman J. Mankiewicz") or abbreviation ("Dr.", "U.S.")
        end = m.start() + len(m.group(1))  # closing quotes/brackets stay with their sentence
        parts.append(text[start:end].strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _edit_word(word: str, rng: np.random.Generator) -> str:
    """Apply one character edit (swap, insert, delete or substitute) to the letters of ``word``.

    The result always differs from ``word``. Words without letters are returned unchanged.
    """
    letters = [i for i, c in enumerate(word) if c.isalpha()]
    if not letters:
        return word
    ops = ["insert", "substitute"]
    if len(letters) >= 2:
        ops.append("delete")
    swaps = [
        i
        for i in letters
        if i + 1 < len(word) and word[i + 1].isalpha() and word[i].lower() != word[i + 1].lower()
    ]
    if swaps:
        ops.append("swap")
    op = ops[int(rng.integers(len(ops)))]
    if op == "swap":
        i = swaps[int(rng.integers(len(swaps)))]
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    i = letters[int(rng.integers(len(letters)))]
    if op == "delete":
        return word[:i] + word[i + 1 :]
    c = _LETTERS[int(rng.integers(26))]
    if op == "insert":
        return word[:i] + c + word[i:]
    # substitute with a different letter, keeping case
    old = word[i].lower()
    choices = [x for x in _LETTERS if x != old]
    c = choices[int(rng.integers(len(choices)))]
    if word[i].isupper():
        c = c.upper()
    return word[:i] + c + word[i + 1 :]


def _typo_tokens(tokens: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """Give ``round(rate * len(tokens))`` (at least one) distinct alphabetic tokens one edit."""
    eligible = [i for i, t in enumerate(tokens) if _ALPHA_RE.search(t)]
    if not eligible or rate <= 0:
        return list(tokens)
    k = min(len(eligible), max(1, round(rate * len(tokens))))
    picked = rng.choice(len(eligible), size=k, replace=False)
    out = list(tokens)
    for j in sorted(int(p) for p in picked):
        i = eligible[j]
        out[i] = _edit_word(out[i], rng)
    return out


def _rejoin(text: str, new_tokens: list[str]) -> str:
    """Put ``new_tokens`` back in place of the whitespace-separated tokens of ``text``."""
    it = iter(new_tokens)
    return _WORD_RE.sub(lambda m: next(it), text)


# --------------------------------------------------------------------------------------------
# Perturbations
# --------------------------------------------------------------------------------------------


def exact(text: str, rng: np.random.Generator) -> str:
    """Return ``text`` unchanged (the upper bound every method should reach)."""
    return text


def typos(
    text: str, rng: np.random.Generator, min_rate: float = 0.03, max_rate: float = 0.05
) -> str:
    """One character edit in a fraction ``U(min_rate, max_rate)`` of the words (at least one).

    An edit swaps two adjacent letters, inserts a letter, deletes a letter or substitutes one.
    Whitespace and word count are preserved.
    """
    tokens = _words(text)
    rate = float(rng.uniform(min_rate, max_rate))
    return _rejoin(text, _typo_tokens(tokens, rate, rng))


def word_drop(
    text: str, rng: np.random.Generator, drop_rate: float = 0.15, typo_rate: float = 0.02
) -> str:
    """Drop ``round(drop_rate * n)`` words, then give ``typo_rate`` of the rest one typo each.

    The kept words stay in order and are joined with single spaces. At least one word is kept.
    With ``typo_rate=0`` the output is an exact subsequence of the input's words.
    """
    tokens = _words(text)
    n = len(tokens)
    if n == 0:
        return text
    n_drop = min(n - 1, round(drop_rate * n))
    dropped = set(int(i) for i in rng.choice(n, size=n_drop, replace=False)) if n_drop else set()
    kept = [t for i, t in enumerate(tokens) if i not in dropped]
    if typo_rate > 0:
        kept = _typo_tokens(kept, typo_rate, rng)
    return " ".join(kept)


def prefix(
    text: str,
    rng: np.random.Generator,
    min_frac: float = 0.3,
    max_frac: float = 0.6,
    min_words: int = 8,
) -> str:
    """The leading ``U(min_frac, max_frac)`` of the words, at least ``min_words`` of them.

    The result is a true string prefix of ``text`` (original spacing kept), ending at a word
    boundary. A text of at most ``min_words`` words is returned whole.
    """
    spans = [m.span() for m in _WORD_RE.finditer(text)]
    n = len(spans)
    if n <= min_words:
        return text
    frac = float(rng.uniform(min_frac, max_frac))
    k = min(n, max(min_words, round(frac * n)))
    return text[: spans[k - 1][1]]


def sentence_shuffle(text: str, rng: np.random.Generator) -> str:
    """The sentences of ``text`` (see :func:`split_sentences`) in a random, non-identity order.

    Sentences are joined with single spaces. A single-sentence text is returned unchanged.
    """
    sents = split_sentences(text)
    if len(sents) < 2:
        return text
    for _ in range(20):
        order = rng.permutation(len(sents))
        shuffled = [sents[int(i)] for i in order]
        if shuffled != sents:
            return " ".join(shuffled)
    return " ".join(sents)


_CHATTY_OPENERS = (
    "Sure! Here's what I found:",
    "Great question! Here is a short summary:",
    "Of course. Here's some information on that:",
    "Certainly! Here is an overview:",
    "Absolutely, happy to help. Here's what I know:",
    "Here is the information you asked for:",
    "Good question. From what I know:",
    "Sure thing! Here's a quick explanation:",
)
_CHATTY_CLOSERS = (
    "Let me know if you need more.",
    "I hope this helps! Let me know if you have any other questions.",
    "Feel free to ask if you'd like more details.",
    "Is there anything else you'd like to know?",
    "Hope that answers your question!",
    "",
)
_CHATTY_SEPARATORS = ("\n\n", " ", "\n\n> ", "\n\n**Summary:** ")


def chatty(text: str, rng: np.random.Generator, span_prob: float = 0.5) -> str:
    """Wrap the text, or (with probability ``span_prob``) a span of its sentences, in chat prose.

    An opener ("Sure! Here's what I found:") and a closer ("Let me know if you need more.") are
    drawn from fixed template lists, and a separator (blank line, quote, bold heading) between
    them and the passage. A span covers at least half of the sentences, contiguously.
    """
    sents = split_sentences(text)
    body = text.strip()
    if len(sents) >= 2 and rng.random() < span_prob:
        length = int(rng.integers((len(sents) + 1) // 2, len(sents) + 1))
        start = int(rng.integers(0, len(sents) - length + 1))
        body = " ".join(sents[start : start + length])
    opener = _CHATTY_OPENERS[int(rng.integers(len(_CHATTY_OPENERS)))]
    closer = _CHATTY_CLOSERS[int(rng.integers(len(_CHATTY_CLOSERS)))]
    sep = _CHATTY_SEPARATORS[int(rng.integers(len(_CHATTY_SEPARATORS)))]
    out = opener + sep + body
    if closer:
        out += "\n\n" + closer
    return out


# (pattern, replacement) pairs of OCR confusions, both directions.
_OCR_CONFUSIONS = (
    ("rn", "m"),
    ("m", "rn"),
    ("l", "1"),
    ("1", "l"),
    ("O", "0"),
    ("0", "O"),
    ("e", "c"),
    ("c", "e"),
    ("cl", "d"),
    ("d", "cl"),
    (" ", ""),
)


def ocr(text: str, rng: np.random.Generator, rate: float = 0.05) -> str:
    """OCR-like character confusions at ``round(rate * len(text))`` non-overlapping sites.

    Confusions: rn<->m, l<->1, O<->0, e<->c, cl<->d, and dropped spaces. Sites are drawn
    uniformly from every place a confusion applies; fewer are made if fewer exist.
    """
    sites: list[tuple[int, str, str]] = []
    for pat, rep in _OCR_CONFUSIONS:
        start = 0
        while (i := text.find(pat, start)) >= 0:
            sites.append((i, pat, rep))
            start = i + 1
    if not sites:
        return text
    k = min(len(sites), max(1, round(rate * len(text))))
    order = rng.permutation(len(sites))
    taken: list[tuple[int, str, str]] = []
    used = np.zeros(len(text) + 1, dtype=bool)
    for j in order:
        i, pat, rep = sites[int(j)]
        if used[i : i + len(pat)].any():
            continue
        used[i : i + len(pat)] = True
        taken.append((i, pat, rep))
        if len(taken) == k:
            break
    out = text
    for i, pat, rep in sorted(taken, reverse=True):
        out = out[:i] + rep + out[i + len(pat) :]
    return out


def synonym(
    text: str, rng: np.random.Generator, rate: float = 0.25, wordnet: WordNet | None = None
) -> str:
    """Swap ``round(rate * n_content)`` content words for a WordNet synonym.

    Content words are lowercase alphabetic words of three or more letters that are not stop words
    (capitalised words are left alone, since most are names). A word is swapped only if WordNet
    has a single-word synonym for it (see :meth:`WordNet.synonyms`); if fewer such words exist,
    fewer are swapped. Punctuation attached to a word is kept and the word count is unchanged.
    """
    wn = wordnet or WordNet.default()
    tokens = _words(text)
    content: list[int] = []
    eligible: list[tuple[int, list[str]]] = []
    for i, tok in enumerate(tokens):
        m = _CORE_RE.fullmatch(tok)
        if not m:
            continue
        core = m.group(2)
        if not core.islower() or len(core) < 3 or core in _STOPWORDS:
            continue
        content.append(i)
        syns = wn.synonyms(core)
        if syns:
            eligible.append((i, syns))
    if not eligible:
        return text
    k = min(len(eligible), max(1, round(rate * len(content))))
    picked = rng.choice(len(eligible), size=k, replace=False)
    out = list(tokens)
    for j in sorted(int(p) for p in picked):
        i, syns = eligible[j]
        m = _CORE_RE.fullmatch(out[i])
        out[i] = m.group(1) + syns[int(rng.integers(len(syns)))] + m.group(3)
    return _rejoin(text, out)


def rewrite(text: str, rng: np.random.Generator, synonym_rate: float = 0.5,
            drop_rate: float = 0.3) -> str:
    """A loose rewrite that keeps the meaning but little of the wording: WordNet synonyms for
    ``synonym_rate`` of the content words, the sentences reordered, then ``drop_rate`` of the
    words dropped (no typos).

    A cheap stand-in for a paraphrase: it shares few exact phrases with the source, so a ranker
    or calibration fitted on it learns to trust a clear semantic match, not only shared wording.
    """
    out = synonym(text, rng, rate=synonym_rate)
    if len(split_sentences(out)) > 1:
        out = sentence_shuffle(out, rng)
    return word_drop(out, rng, drop_rate=drop_rate, typo_rate=0.0)


def _paraphrase_kind(text: str, rng: np.random.Generator) -> str:
    """Rewrite ``text`` with the default :class:`gif_core.paraphrase.Paraphraser`.

    Raises :class:`gif_core.paraphrase.ParaphraseFailed` when the model output is degenerate.
    """
    from gif_core import paraphrase as _para

    seed = int(rng.integers(2**31 - 1))
    (out,) = _para.default_paraphraser().paraphrase([text], seed=seed)
    if out is None:
        raise _para.ParaphraseFailed("the language model gave an empty or degenerate paraphrase")
    return out


KINDS: dict[str, Callable[..., str]] = {
    "exact": exact,
    "typos": typos,
    "word_drop": word_drop,
    "prefix": prefix,
    "sentence_shuffle": sentence_shuffle,
    "synonym": synonym,
    "chatty": chatty,
    "ocr": ocr,
    "rewrite": rewrite,
    "paraphrase": _paraphrase_kind,
}
"""Perturbation registry: kind name -> ``fn(text, rng) -> str``."""


def perturb(text: str, kind: str, seed: int) -> str:
    """Apply perturbation ``kind`` to ``text`` with ``numpy.random.default_rng(seed)``."""
    if not isinstance(text, str):
        raise InputError(f"perturb: text must be a str, got {type(text).__name__}")
    fn = _kind_fn(kind)
    return fn(text, np.random.default_rng(seed))


def _kind_fn(kind: str) -> Callable[..., str]:
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown perturbation kind {kind!r}; use one of {sorted(KINDS)}"
        ) from None


# --------------------------------------------------------------------------------------------
# WordNet
# --------------------------------------------------------------------------------------------

_CORE_RE = re.compile(r"^([^A-Za-z]*)([A-Za-z]+)([^A-Za-z]*)$")

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them themselves
    then there these they this those through to too under until up very was we were what when
    where which while who whom why will with would you your yours yourself yourselves one two
    three many much may might must shall well often since though although however within without
    upon among became become becomes first second new used use known called""".split()
)

_POS_FILES = (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))


class WordNet:
    """A minimal reader of the WordNet 3.0 database files (``index.*`` and ``data.*``).

    :meth:`synonyms` returns the other lemmas of a word's first synset, for the part of speech in
    which the word is most frequent (WordNet's tagged-sense count; ties favour noun, verb,
    adjective, adverb in that order). Only the surface form is looked up: inflected forms such as
    "dogs" are not lemmatised.
    """

    DEFAULT_DIR = "/usr/share/wordnet"
    _default: WordNet | None = None

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory or os.environ.get("GIF_WORDNET_DIR", self.DEFAULT_DIR))
        missing = [
            f"{kind}.{name}"
            for _, name in _POS_FILES
            for kind in ("index", "data")
            if not (self.directory / f"{kind}.{name}").is_file()
        ]
        if missing:
            raise InputError(
                f"WordNet files {missing} not found in {self.directory}; install them with "
                "`apt-get install wordnet-base` or point GIF_WORDNET_DIR at a WordNet 3.0 dict "
                "directory"
            )
        # lemma -> (tagsense_count, pos_rank, pos_name, first synset offset)
        self._index: dict[str, tuple[int, int, str, int]] | None = None
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def default(cls) -> WordNet:
        """A process-wide reader of :attr:`DEFAULT_DIR` (or ``$GIF_WORDNET_DIR``)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def _load_index(self) -> dict[str, tuple[int, int, str, int]]:
        if self._index is not None:
            return self._index
        index: dict[str, tuple[int, int, str, int]] = {}
        for rank, (_, name) in enumerate(_POS_FILES):
            with open(self.directory / f"index.{name}", encoding="utf-8") as f:
                for line in f:
                    if line.startswith(" "):
                        continue  # licence header
                    parts = line.split()
                    # lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt offsets
                    p_cnt = int(parts[3])
                    tagsense = int(parts[5 + p_cnt])
                    first = int(parts[6 + p_cnt])
                    entry = (tagsense, -rank, name, first)
                    old = index.get(parts[0])
                    if old is None or entry[:2] > old[:2]:
                        index[parts[0]] = entry
        self._index = index
        logger.debug("loaded WordNet index from %s: %d lemmas", self.directory, len(index))
        return index

    def _synset_lemmas(self, pos_name: str, offset: int) -> list[str]:
        with open(self.directory / f"data.{pos_name}", "rb") as f:
            f.seek(offset)
            parts = f.readline().decode("utf-8").split()
        # offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] ...
        w_cnt = int(parts[3], 16)
        words = parts[4 : 4 + 2 * w_cnt : 2]
        # adjective markers such as "(a)" or "(p)"
        return [re.sub(r"\([a-z]+\)$", "", w) for w in words]

    def synonyms(self, word: str) -> list[str]:
        """Single-word lowercase synonyms of ``word`` from its first synset (may be empty)."""
        key = word.lower()
        if key in self._cache:
            return self._cache[key]
        entry = self._load_index().get(key)
        result: list[str] = []
        if entry is not None:
            for lemma in self._synset_lemmas(entry[2], entry[3]):
                lemma_l = lemma.lower()
                if lemma_l != key and lemma_l.isalpha() and lemma_l not in result:
                    result.append(lemma_l)
        self._cache[key] = result
        return result


# --------------------------------------------------------------------------------------------
# Query generation
# --------------------------------------------------------------------------------------------


def _query_seed(seed: int, kind: str, sample_index: int) -> int:
    ss = np.random.SeedSequence([int(seed), zlib.crc32(kind.encode()), int(sample_index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _check_samples(samples: Sequence[tuple[str, str]]) -> None:
    for i, item in enumerate(samples):
        if (
            not isinstance(item, (tuple, list))
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
        ):
            raise InputError(
                f"samples[{i}] must be an (id, text) pair of strings, got {item!r:.80}; "
                "pass a sequence of (sample_id, text) tuples"
            )


def generate_queries(
    samples: Sequence[tuple[str, str]],
    kinds: Sequence[str],
    n_per_kind: int,
    seed: int = 0,
    *,
    paraphraser: Any = None,
) -> list[Query]:
    """Make ``n_per_kind`` planted-provenance queries of each kind from ``(id, text)`` samples.

    For each kind, source samples are visited in a seeded random order (independent of the other
    kinds and of the order of ``kinds``); each gets the perturbation with its own seed, recorded
    in ``meta["seed"]`` so that ``perturb(text, kind, meta["seed"])`` reproduces the query.
    Samples whose text is empty, or on which a non-``exact`` perturbation changes nothing (a
    one-sentence text for ``sentence_shuffle``), are skipped and the next one is used; if the
    samples run out a warning is logged and fewer queries are returned for that kind.

    ``paraphrase`` queries are written in batches by ``paraphraser`` (default:
    :func:`gif_core.paraphrase.default_paraphraser`); degenerate outputs are dropped. Their
    ``meta["seed"]`` is the seed of the batch they were generated in, so they are reproduced by
    calling this function again with the same arguments, not by :func:`perturb`.
    Query ids are ``f"{kind}-{i:05d}"``.
    """
    _check_samples(samples)
    if isinstance(kinds, str):
        kinds = [kinds]
    for kind in kinds:
        _kind_fn(kind)
    if len(set(kinds)) != len(kinds):
        raise InputError(f"kinds {list(kinds)} has duplicates; list each kind once")
    if (
        not isinstance(n_per_kind, (int, np.integer))
        or isinstance(n_per_kind, bool)
        or (n_per_kind < 1)
    ):
        raise InputError(f"n_per_kind must be a positive integer, got {n_per_kind!r}")
    if not samples:
        raise InputError("samples is empty; pass at least one (id, text) pair")

    queries: list[Query] = []
    for kind in kinds:
        order_rng = np.random.default_rng([int(seed), zlib.crc32(kind.encode())])
        order = [int(i) for i in order_rng.permutation(len(samples))]
        if kind == "paraphrase":
            made = _paraphrase_queries(samples, order, n_per_kind, seed, paraphraser)
        else:
            made = _plain_queries(samples, order, kind, n_per_kind, seed)
        if len(made) < n_per_kind:
            logger.warning(
                "kind %r: only %d of %d queries could be made from %d samples",
                kind,
                len(made),
                n_per_kind,
                len(samples),
            )
        queries.extend(made)
    return queries


def _plain_queries(
    samples: Sequence[tuple[str, str]], order: list[int], kind: str, n: int, seed: int
) -> list[Query]:
    fn = KINDS[kind]
    out: list[Query] = []
    for idx in order:
        sid, text = samples[idx]
        if not text.strip():
            continue
        qseed = _query_seed(seed, kind, idx)
        new = fn(text, np.random.default_rng(qseed))
        if not new.strip() or (kind != "exact" and new == text):
            continue
        out.append(
            Query(
                qid=f"{kind}-{len(out):05d}",
                text=new,
                source_ids=[sid],
                kind=kind,
                meta={"seed": qseed},
            )
        )
        if len(out) == n:
            break
    return out


def _paraphrase_queries(
    samples: Sequence[tuple[str, str]],
    order: list[int],
    n: int,
    seed: int,
    paraphraser: Any,
) -> list[Query]:
    if paraphraser is None:
        from gif_core.paraphrase import default_paraphraser

        paraphraser = default_paraphraser()
    candidates = [i for i in order if samples[i][1].strip()]
    out: list[Query] = []
    pos = 0
    while len(out) < n and pos < len(candidates):
        # ask for a few extra to make up for dropped outputs
        chunk = candidates[pos : pos + max(1, n - len(out)) + 2]
        pos += len(chunk)
        texts = [samples[i][1] for i in chunk]
        chunk_seed = _query_seed(seed, "paraphrase", chunk[0])
        results = paraphraser.paraphrase(texts, seed=chunk_seed)
        for idx, new in zip(chunk, results, strict=True):
            if new is None:
                continue
            out.append(
                Query(
                    qid=f"paraphrase-{len(out):05d}",
                    text=new,
                    source_ids=[samples[idx][0]],
                    kind="paraphrase",
                    meta={"seed": chunk_seed},
                )
            )
            if len(out) == n:
                break
    return out


def generate_out_of_corpus(texts: Sequence[str], n: int, seed: int) -> list[Query]:
    """``n`` queries of kind ``out_of_corpus`` (no source) drawn from ``texts`` without repeats.

    ``texts`` must be held out of the index: the right answer for these queries is to abstain.
    Empty texts are skipped. Query ids are ``f"out_of_corpus-{i:05d}"``.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError("texts must be a sequence of strings (held-out passages)")
    usable = [t for t in texts if t.strip()]
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if n > len(usable):
        raise InputError(
            f"asked for {n} out-of-corpus queries but only {len(usable)} non-empty texts were "
            "given; pass more held-out texts or lower n"
        )
    rng = np.random.default_rng([int(seed), zlib.crc32(b"out_of_corpus")])
    picked = rng.choice(len(usable), size=n, replace=False)
    return [
        Query(
            qid=f"out_of_corpus-{i:05d}", text=usable[int(j)], source_ids=[], kind="out_of_corpus"
        )
        for i, j in enumerate(picked)
    ]


# --------------------------------------------------------------------------------------------
# Query files
# --------------------------------------------------------------------------------------------

_FORMAT_HINT = (
    'each line must be a JSON object like {"qid": "q1", "text": "...", "source_ids": ["s1"], '
    '"kind": "exact"} (use "image": "path.png" instead of "text" for image queries)'
)


def _bad(path: Path, lineno: int, problem: str) -> InputError:
    return InputError(f"{path}, line {lineno}: {problem}; {_FORMAT_HINT}")


def read_queries(path: str | os.PathLike) -> list[Query]:
    """Read a JSON Lines query file, validating every line.

    Each non-blank line is an object with ``qid`` (non-empty string, unique in the file),
    exactly one of ``text`` / ``image`` (non-empty string), ``source_ids`` (list of strings,
    empty for out-of-corpus queries) and ``kind`` (non-empty string); ``meta`` (object) is
    optional and other keys are ignored. Raises :class:`InputError` naming the line and the fix.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"query file {p} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"query file {p} is a directory; pass a .jsonl file") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"{p}, line {lineno}: not valid UTF-8 (byte {e.start}); re-save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad(p, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise _bad(p, lineno, f"expected a JSON object, got {type(obj).__name__}")
        for key in ("qid", "source_ids", "kind"):
            if key not in obj:
                raise _bad(p, lineno, f"missing field {key!r}")
        qid = obj["qid"]
        if not isinstance(qid, str) or not qid.strip():
            raise _bad(p, lineno, f"'qid' must be a non-empty string, got {qid!r}")
        if qid in seen:
            raise _bad(
                p,
                lineno,
                f"duplicate qid {qid!r} (first on line {seen[qid]}); give every query a unique qid",
            )
        text, image = obj.get("text"), obj.get("image")
        if (text is None) == (image is None):
            which = "both" if text is not None else "neither"
            raise _bad(p, lineno, f"has {which} of 'text' and 'image'; give exactly one")
        for key, val in (("text", text), ("image", image)):
            if val is not None and (not isinstance(val, str) or not val.strip()):
                raise _bad(p, lineno, f"{key!r} must be a non-empty string, got {val!r:.60}")
        sids = obj["source_ids"]
        if not isinstance(sids, list) or not all(isinstance(s, str) and s for s in sids):
            raise _bad(
                p,
                lineno,
                f"'source_ids' must be a list of non-empty strings, got "
                f"{sids!r:.60} (use [] for out-of-corpus queries)",
            )
        if len(set(sids)) != len(sids):
            raise _bad(p, lineno, f"'source_ids' {sids!r:.60} lists an id twice; list each once")
        kind = obj["kind"]
        if not isinstance(kind, str) or not kind.strip():
            raise _bad(p, lineno, f"'kind' must be a non-empty string, got {kind!r}")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise _bad(p, lineno, f"'meta' must be an object, got {type(meta).__name__}")
        seen[qid] = lineno
        queries.append(
            Query(qid=qid, text=text, source_ids=list(sids), kind=kind, image=image, meta=meta)
        )
    return queries


def write_queries(path: str | os.PathLike, queries: Sequence[Query]) -> None:
    """Write ``queries`` as JSON Lines, atomically (temporary file, fsync, ``os.replace``).

    Only one of ``text`` / ``image`` is written; ``meta`` is written when non-empty.
    """
    p = Path(path)
    lines = []
    seen: set[str] = set()
    for i, q in enumerate(queries):
        if not isinstance(q, Query):
            raise InputError(f"queries[{i}] is a {type(q).__name__}, not a Query")
        if (q.text is None) == (q.image is None):
            raise InputError(f"query {q.qid!r} must have exactly one of text and image")
        if q.qid in seen:
            raise InputError(f"duplicate qid {q.qid!r}; give every query a unique qid")
        seen.add(q.qid)
        obj: dict[str, Any] = {"qid": q.qid}
        if q.text is not None:
            obj["text"] = q.text
        else:
            obj["image"] = q.image
        obj["source_ids"] = list(q.source_ids)
        obj["kind"] = q.kind
        if q.meta:
            obj["meta"] = q.meta
        lines.append(json.dumps(obj, ensure_ascii=False))
    data = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
