import numpy as np
import pytest

from gif_core.errors import InputError
from gif_core.metrics import (
    latency_summary,
    percentile,
    percentiles,
    precision_at_k,
    rank_of_first_relevant,
    recall_at_k,
    reciprocal_rank,
    summarize,
)


def test_rank_of_first_relevant():
    assert rank_of_first_relevant(["x", "a", "b"], {"a", "b"}) == 2
    assert rank_of_first_relevant(["a"], {"a"}) == 1
    assert rank_of_first_relevant(["x", "y"], {"a"}) is None
    assert rank_of_first_relevant([], {"a"}) is None


def test_precision_recall_rr_hand_computed():
    ranked = ["x", "a", "y", "b", "z"]
    rel = {"a", "b", "c"}
    assert precision_at_k(ranked, rel, 1) == 0.0
    assert precision_at_k(ranked, rel, 2) == 0.5
    assert precision_at_k(ranked, rel, 5) == 2 / 5
    # divides by k even when fewer ids were returned
    assert precision_at_k(ranked, rel, 10) == 2 / 10
    assert recall_at_k(ranked, rel, 1) == 0.0
    assert recall_at_k(ranked, rel, 2) == 1 / 3
    assert recall_at_k(ranked, rel, 5) == 2 / 3
    assert reciprocal_rank(ranked, rel) == 0.5
    assert reciprocal_rank(["x"], rel) == 0.0


def test_duplicate_ids_count_once():
    assert precision_at_k(["a", "a", "a"], {"a"}, 3) == 1 / 3
    assert recall_at_k(["a", "a"], {"a", "b"}, 2) == 0.5


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_k(k):
    with pytest.raises(InputError, match="k must be a positive integer"):
        precision_at_k(["a"], {"a"}, k)


def test_empty_relevant_is_an_error():
    with pytest.raises(InputError, match="false_attribution_rate"):
        recall_at_k(["a"], set(), 1)
    with pytest.raises(InputError):
        reciprocal_rank(["a"], [])


def test_percentile_hand_computed_and_matches_numpy():
    vals = [10, 20, 30, 40]
    assert percentile(vals, 50) == 25.0
    assert percentile(vals, 95) == pytest.approx(38.5)
    assert percentile(vals, 99) == pytest.approx(39.7)
    assert percentile(vals, 0) == 10.0
    assert percentile(vals, 100) == 40.0
    assert percentile([7], 99) == 7.0
    assert percentile([], 50) is None
    rng = np.random.default_rng(0)
    x = rng.exponential(size=101).tolist()
    for q in (1, 37.5, 50, 95, 99):
        assert percentile(x, q) == pytest.approx(float(np.percentile(x, q)))
    with pytest.raises(InputError):
        percentile(vals, 101)
    with pytest.raises(InputError, match="NaN"):
        percentile([1.0, float("nan")], 50)


def test_percentiles_and_latency_summary():
    assert percentiles([1, 3]) == {"p50": 2.0, "p95": pytest.approx(2.9), "p99": 2.98, "mean": 2}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "mean": None}
    lat = latency_summary([{"embed": 1, "search": 5}, {"embed": 3}])
    assert list(lat) == ["embed", "search"]
    assert lat["embed"]["n"] == 2 and lat["embed"]["p50"] == 2.0
    assert lat["search"] == {"n": 1, "p50": 5.0, "p95": 5.0, "p99": 5.0, "mean": 5.0}
    with pytest.raises(InputError, match="milliseconds"):
        latency_summary([{"embed": "fast"}])


ROWS = [
    {
        "qid": "q1",
        "kind": "exact",
        "ranked_ids": ["a", "b", "c"],
        "source_ids": ["a"],
        "abstained": False,
        "timings_ms": {"embed": 10, "search": 1},
    },
    {
        "qid": "q2",
        "kind": "exact",
        "ranked_ids": ["x", "a", "b"],
        "source_ids": ["a", "b"],
        "abstained": False,
        "timings_ms": {"embed": 20, "search": 3},
    },
    {
        "qid": "q3",
        "kind": "typos",
        "ranked_ids": ["x", "y", "z"],
        "source_ids": ["a"],
        "abstained": False,
        "timings_ms": {"embed": 30},
    },
    # abstained: scored as an empty ranking even though it holds the right id
    {
        "qid": "q4",
        "kind": "typos",
        "ranked_ids": ["a"],
        "source_ids": ["a"],
        "abstained": True,
        "timings_ms": {"embed": 40},
    },
    {
        "qid": "q5",
        "kind": "out_of_corpus",
        "ranked_ids": ["a"],
        "source_ids": [],
        "abstained": False,
    },
    {"qid": "q6", "kind": "out_of_corpus", "ranked_ids": [], "source_ids": [], "abstained": True},
    {
        "qid": "q7",
        "kind": "out_of_corpus",
        "ranked_ids": ["b"],
        "source_ids": [],
        "abstained": True,
    },
]


def test_summarize_hand_computed():
    s = summarize(ROWS)
    o = s["overall"]
    assert o["n"] == 4
    assert o["p@1"] == pytest.approx(0.25)
    assert o["p@5"] == pytest.approx((1 / 5 + 2 / 5) / 4)  # 0.15
    assert o["p@10"] == pytest.approx((1 / 10 + 2 / 10) / 4)  # 0.075
    assert o["r@1"] == pytest.approx(0.25)
    assert o["r@5"] == pytest.approx(0.5)
    assert o["r@10"] == pytest.approx(0.5)
    assert o["mrr"] == pytest.approx((1 + 1 / 2) / 4)  # 0.375
    assert o["abstention_rate"] == pytest.approx(0.25)
    assert o["n_out_of_corpus"] == 3
    assert o["false_attribution_rate"] == pytest.approx(1 / 3)

    pk = s["per_kind"]
    assert set(pk) == {"exact", "typos", "out_of_corpus"}
    assert pk["exact"]["n"] == 2
    assert pk["exact"]["p@1"] == pytest.approx(0.5)
    assert pk["exact"]["r@5"] == pytest.approx(1.0)
    assert pk["exact"]["mrr"] == pytest.approx(0.75)
    assert pk["exact"]["abstention_rate"] == 0.0
    assert pk["typos"]["mrr"] == 0.0 and pk["typos"]["p@1"] == 0.0
    assert pk["typos"]["abstention_rate"] == pytest.approx(0.5)
    assert pk["out_of_corpus"] == {
        "n": 3,
        "abstention_rate": pytest.approx(2 / 3),
        "false_attribution_rate": pytest.approx(1 / 3),
    }

    lat = s["latency_ms"]
    assert lat["embed"] == {
        "n": 4,
        "p50": 25.0,
        "p95": pytest.approx(38.5),
        "p99": pytest.approx(39.7),
        "mean": 25.0,
    }
    assert lat["search"]["p50"] == 2.0 and lat["search"]["p95"] == pytest.approx(2.9)


def test_summarize_custom_ks_and_empty_groups():
    s = summarize(ROWS[:2], ks=(2,))
    assert set(s["overall"]) == {
        "n",
        "p@2",
        "r@2",
        "mrr",
        "abstention_rate",
        "p@1_ranking",
        "mrr_ranking",
        "n_out_of_corpus",
        "false_attribution_rate",
    }
    assert s["overall"]["p@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert s["overall"]["false_attribution_rate"] is None
    only_ooc = summarize(ROWS[4:])
    assert only_ooc["overall"]["n"] == 0 and only_ooc["overall"]["mrr"] is None
    assert only_ooc["latency_ms"] == {}
    empty = summarize([])
    assert empty["overall"]["n"] == 0 and empty["per_kind"] == {}


def test_summarize_bad_rows():
    with pytest.raises(InputError, match=r"rows\[0\] is missing 'source_ids'"):
        summarize([{"qid": "q", "kind": "exact", "ranked_ids": []}])
    with pytest.raises(InputError, match="duplicate qid"):
        summarize([ROWS[0], ROWS[0]])
    with pytest.raises(InputError, match="must be a list"):
        summarize([{**ROWS[0], "ranked_ids": "abc"}])
    with pytest.raises(InputError, match="ks is empty"):
        summarize(ROWS, ks=())


def test_ranking_metrics_ignore_abstention():
    rows = [
        {"qid": "a", "kind": "k", "ranked_ids": ["s1", "x"], "source_ids": ["s1"],
         "abstained": True},
        {"qid": "b", "kind": "k", "ranked_ids": ["x", "s2"], "source_ids": ["s2"],
         "abstained": False},
    ]
    o = summarize(rows)["overall"]
    assert o["p@1"] == 0.0 and o["mrr"] == pytest.approx(0.25)
    assert o["p@1_ranking"] == 0.5 and o["mrr_ranking"] == pytest.approx(0.75)
    assert o["abstention_rate"] == 0.5
