"""`gif eval`: results folder, schema, and refusal of query sets the index cannot serve."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest

from gif_core.cli import main
from gif_core.errors import InputError
from gif_core.evaluate import chrome_path, run_eval
from gif_core.queries import Query, generate_queries


def test_eval_writes_valid_metrics(engine, wiki_slice, tmp_path):
    queries = generate_queries([(s.id, s.text) for s in wiki_slice], ["exact", "word_drop"], 8,
                               seed=9)
    out = tmp_path / "ev"
    metrics = run_eval(engine, queries, out, influence=False, proj_dims=(32,))
    schema = json.loads(resources.files("gif_core").joinpath("schemas/metrics.schema.json")
                        .read_text())
    on_disk = json.loads((out / "metrics.json").read_text())
    jsonschema.validate(on_disk, schema)
    assert on_disk["n_queries"] == 16
    assert metrics["methods"]["gif"]["per_kind"]["exact"]["p@1"] == 1.0
    assert metrics["methods"]["gif"]["per_kind"]["word_drop"]["p@1"] >= 0.875
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "summary.md", "rows.jsonl",
                                               "queries.jsonl", "p_at_k.html"}
    from gif_core.queries import read_queries

    assert [q.text for q in read_queries(out / "queries.jsonl")] == [q.text for q in queries]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sum(r["method"] == "bm25" for r in rows) == 16
    # the m sweep: gradient-only at m=32 beside the index's own m
    assert metrics["methods"]["gradient_only_m32"]["overall"]["n"] == 16
    res = on_disk["resources"]
    assert res["samples"] == len(engine)
    assert res["bytes_per_sample"] == pytest.approx(res["index_bytes_on_disk"] / len(engine),
                                                    abs=0.1)
    assert res["peak_rss_mb"] > 100
    assert "latency_hist.html" in on_disk["figures"]["html"]
    if chrome_path() is None:
        assert "Chrome" in on_disk["figures"]["png_error"]
    else:
        assert on_disk["figures"]["png"] == ["p_at_k.png", "per_kind.png", "latency.png",
                                             "latency_hist.png"]
        assert (out / "per_kind.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_source_ids_leave_no_folder(engine, tmp_path):
    q = [Query("q1", "some text", ["not-an-id"], "exact")]
    with pytest.raises(InputError, match="not in the index"):
        run_eval(engine, q, tmp_path / "ev", influence=False)
    assert not (tmp_path / "ev").exists()


def test_image_query_on_text_index(engine, tmp_path):
    q = [Query("q1", None, [], "crop", image="x.png")]
    with pytest.raises(InputError, match="image query"):
        run_eval(engine, q, tmp_path / "ev", influence=False)


def test_cli_eval_reports_bad_query_file(small_index, tmp_path, capsys):
    qf = tmp_path / "q.jsonl"
    qf.write_text('{"qid": "a", "source_ids": ["x"], "kind": "exact"}\n')
    assert main(["eval", str(small_index), "--queries", str(qf), "--out",
                 str(tmp_path / "ev")]) == 2
    assert "line 1" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
