"""Normalisation, offset mapping and tokenisation."""

from __future__ import annotations

import numpy as np
import pytest

from gif_core.errors import InputError
from gif_core.normalize import (
    normalize_text,
    normalize_with_bounds,
    normalize_with_offsets,
    token_spans,
    tokenize,
    verbatim_tokens,
)


@pytest.fixture(scope="module")
def wiki_texts() -> list[str]:
    from gif_core.data import wiki_samples

    return [s.text for s in wiki_samples()[:500]]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ηello Wоrld", "hello world"),  # Greek capital eta, Cyrillic small o
        ("ВАТ СОМЕ", "bat come"),  # all-Cyrillic capitals that look Latin
        ("ＦＵＬＬ　ｗｉｄｔｈ １２３", "full width 123"),  # fullwidth forms, ideographic space
        ("ﬁne ﬂow", "fine flow"),  # ligatures (NFKC)
        ("Straße", "strasse"),  # full case folding
        ("“quoted” ‘single’ «guillemets»", '"quoted" \'single\' "guillemets"'),
        ("a—b–c−d", "a-b-c-d"),  # em dash, en dash, minus sign
        ("pa\u200bss\u00adwo\ufeffrd\u200d", "password"),  # zero-width, soft hyphen, BOM
        ("  many \t\n\r spaces\u00a0here  ", "many spaces here"),
        ("0O1l IO", "0o1l io"),  # digit/letter confusions are not folded
        ("e\u0301cole", "\u00e9cole"),  # decomposed accent composes
        ("𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐", "bold italic"),  # math alphanumerics
        ("", ""),
        (" \u200b ", ""),
    ],
)
def test_normalize_text_cases(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected
    norm, starts = normalize_with_offsets(raw)
    assert norm == expected
    assert len(starts) == len(norm) + 1
    assert starts[-1] == len(raw)


def test_offsets_map_back_to_original_slices() -> None:
    raw = "  Ｈéllo,\u200b  “Wоrld”\n\n ﬁne e\u0301cole  "
    norm, starts, ends = normalize_with_bounds(raw)
    assert norm == 'héllo, "world" fine \u00e9cole'
    expectations = {
        "héllo": "Ｈéllo",
        "world": "Wоrld",  # with the Cyrillic о of the original
        '"world"': "“Wоrld”",
        "fine": "ﬁne",
        "\u00e9cole": "e\u0301cole",
        'héllo, "world"': "Ｈéllo,\u200b  “Wоrld”",
    }
    for needle, original in expectations.items():
        a = norm.index(needle)
        b = a + len(needle)
        assert raw[starts[a] : ends[b - 1]] == original, needle
    # exact numeric offsets for one span
    a = norm.index("world")
    assert (int(starts[a]), int(ends[a + 4])) == (12, 17)
    # orig_start of the position after a span points at the next kept character's cluster
    assert raw[starts[a] : starts[a + 5]] == "Wоrld"
    assert starts.dtype == np.int64 and ends.dtype == np.int64


def test_offsets_ascii_fast_path_exact() -> None:
    raw = "Hello   World\tagain "
    norm, starts = normalize_with_offsets(raw)
    assert norm == "hello world again"
    assert starts.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20]


def test_offsets_agree_with_normalize_text_on_real_corpus(wiki_texts: list[str]) -> None:
    non_ascii = 0
    for text in wiki_texts:
        norm, starts, ends = normalize_with_bounds(text)
        assert norm == normalize_text(text)
        assert len(starts) == len(norm) + 1 and len(ends) == len(norm)
        assert np.all(np.diff(starts) >= 0)
        non_ascii += not text.isascii()
        toks, ts, te = token_spans(norm)
        for tok, a, b in zip(toks, ts, te, strict=True):
            assert norm[a:b] == tok
            assert tok in normalize_text(text[starts[a] : ends[b - 1]])
    assert non_ascii > 50  # the slice exercises the general (non-ASCII) path


def test_normalize_is_idempotent_on_real_corpus(wiki_texts: list[str]) -> None:
    for text in wiki_texts[:200]:
        once = normalize_text(text)
        assert normalize_text(once) == once


def test_tokenize_words_and_cjk() -> None:
    assert tokenize("The Cat's  HAT, 20th-century!") == [
        "the",
        "cat",
        "s",
        "hat",
        "20th",
        "century",
    ]
    assert tokenize("東京は日本") == ["東", "京", "は", "日", "本", "東京", "京は", "は日", "日本"]
    assert tokenize("GPT-4は強い") == ["gpt", "4", "は", "強", "い", "は強", "強い"]
    # combining marks stay inside words (Devanagari vowel signs and virama)
    assert tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
    # Thai has no spaces between words: character unigrams and bigrams
    assert tokenize("แมว") == ["แ", "ม", "ว", "แม", "มว"]
    # confusables fold before tokenising
    assert tokenize("Kubrіck") == tokenize("kubrick") == ["kubrick"]
    assert tokenize("") == []


def test_verbatim_tokens_and_spans() -> None:
    norm = normalize_text("Hello, 世界 world")
    assert verbatim_tokens(norm) == ["hello", "世", "界", "world"]
    toks, starts, ends = token_spans(norm)
    assert toks == ["hello", "世", "界", "world"]
    assert starts.tolist() == [0, 7, 8, 10]
    assert ends.tolist() == [5, 8, 9, 15]


def test_non_string_is_input_error() -> None:
    with pytest.raises(InputError, match="must be str"):
        normalize_with_offsets(b"bytes")  # type: ignore[arg-type]
