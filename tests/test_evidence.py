"""Evidence packages: export, the schema, the report, verification and its refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import pytest
from jsonschema import Draft202012Validator

from gif_core.evidence import (
    attribution_schema,
    export_evidence,
    load_evidence,
    verify_evidence,
)

SOURCE = 7
K = 5


@pytest.fixture(scope="module")
def ev_dir(engine, wiki_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "case"
    return export_evidence(engine, wiki_slice[SOURCE].text, out, k=K)


def _tampered(ev_dir, tmp_path, edit):
    dst = tmp_path / "tampered"
    shutil.copytree(ev_dir, dst)
    ev = json.loads((dst / "evidence.json").read_text(encoding="utf-8"))
    edit(ev)
    (dst / "evidence.json").write_text(json.dumps(ev), encoding="utf-8")
    return dst


def test_export_writes_valid_evidence(ev_dir, engine, wiki_slice, small_index):
    sample = wiki_slice[SOURCE]
    assert sorted(p.name for p in ev_dir.iterdir()) == [
        "evidence.json", "query.jsonl", "query.txt", "report.html"]
    ev = json.loads((ev_dir / "evidence.json").read_text(encoding="utf-8"))
    att = ev["attribution"]
    Draft202012Validator(attribution_schema()).validate(att)
    assert att["results"][0]["id"] == sample.id
    assert len(att["results"]) == K
    assert not att["abstained"]
    assert ev["query"]["text"] == sample.text
    assert ev["query"]["sha256"] == hashlib.sha256(sample.text.encode()).hexdigest()
    assert att["query_sha256"] == ev["query"]["sha256"]
    assert ev["index"]["path"] == str(small_index.resolve())
    assert ev["index"]["manifest_sha256"] == engine.manifest_sha256
    assert ev["index"]["manifest"]["counts"]["samples"] == len(wiki_slice)
    probe = (small_index / "probe.safetensors").read_bytes()
    assert ev["index"]["probe_weights_sha256"] == hashlib.sha256(probe).hexdigest()
    assert ev["index"]["encoder_weights_sha256"] == engine.encoder.weights_sha256
    assert ev["library_versions"]["gif"] == ev["gif_version"]
    assert ev["created_utc"].endswith("Z")
    assert ev["reproduce"]["command"] == (
        f"gif query {small_index.resolve()} --queries query.jsonl -k {K} --json")
    assert (ev_dir / "query.txt").read_bytes() == sample.text.encode("utf-8")
    line = json.loads((ev_dir / "query.jsonl").read_text(encoding="utf-8"))
    assert line == {"qid": "evidence", "text": sample.text}
    report = (ev_dir / "report.html").read_text(encoding="utf-8")
    assert "Likely source" in report and sample.id in report
    assert "not legal proof" in report and "<mark" in report


def test_verify_passes_on_the_same_index(ev_dir, engine):
    report = verify_evidence(ev_dir, engine=engine)
    assert report.ok, report.summary()
    assert report.top_id == json.loads((ev_dir / "evidence.json").read_text())[
        "attribution"]["results"][0]["id"]
    assert report.checked_results == K
    assert report.summary().startswith("verified")


def test_edited_score_fails_naming_the_field(ev_dir, engine, tmp_path):
    def edit(ev):
        ev["attribution"]["results"][0]["score"] += 0.5

    report = verify_evidence(_tampered(ev_dir, tmp_path, edit), engine=engine)
    assert not report.ok
    assert any(d.startswith("results[0] (id ") and ".score:" in d for d in report.differences), \
        report.differences
    assert any(d.startswith("attribution_sha256") for d in report.differences)
    assert "MISMATCH" in report.summary()


def test_swapped_ranking_fails(ev_dir, engine, tmp_path):
    def edit(ev):
        res = ev["attribution"]["results"]
        res[0]["id"], res[1]["id"] = res[1]["id"], res[0]["id"]

    report = verify_evidence(_tampered(ev_dir, tmp_path, edit), engine=engine)
    assert not report.ok
    assert any("ranking" in d and "rank 1" in d for d in report.differences), report.differences


def test_wrong_query_hash_fails(ev_dir, engine, tmp_path):
    def edit(ev):
        ev["query"]["sha256"] = "0" * 64

    report = verify_evidence(_tampered(ev_dir, tmp_path, edit), engine=engine)
    assert not report.ok
    assert any(d.startswith("query.sha256: evidence has " + "0" * 64)
               for d in report.differences), report.differences


def test_edited_query_text_fails(ev_dir, engine, tmp_path):
    def edit(ev):
        ev["query"]["text"] = ev["query"]["text"] + " And one more sentence."

    report = verify_evidence(_tampered(ev_dir, tmp_path, edit), engine=engine)
    assert not report.ok
    assert any(d.startswith("query.sha256") for d in report.differences)
    assert any(d.startswith("query.txt") for d in report.differences)


def test_damaged_evidence_is_an_input_error(ev_dir, tmp_path):
    from gif_core.errors import InputError

    dst = _tampered(ev_dir, tmp_path, lambda ev: ev.pop("index"))
    with pytest.raises(InputError, match="lacks 'index'"):
        load_evidence(dst)
    (dst / "evidence.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not valid UTF-8 JSON"):
        load_evidence(dst)
    with pytest.raises(InputError, match="does not exist"):
        load_evidence(tmp_path / "nowhere")


def test_zip_package_round_trips(engine, wiki_slice, tmp_path):
    out = export_evidence(engine, wiki_slice[11].text, tmp_path / "case", k=3, zip=True)
    assert out.name == "case.zip" and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["evidence.json", "query.jsonl", "query.txt",
                                         "report.html"]
    ev, query_txt = load_evidence(out)
    assert query_txt == wiki_slice[11].text
    assert ev["attribution"]["results"][0]["id"] == wiki_slice[11].id
    assert verify_evidence(out, engine=engine).ok


def test_report_escapes_html(engine, wiki_slice, tmp_path):
    attack = "<script>alert('x')</script> <img src=x onerror=alert(1)> "
    out = export_evidence(engine, attack + wiki_slice[3].text, tmp_path / "case", k=2)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in report and "<img" not in report
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in report
    assert "Content-Security-Policy" in report


def test_export_refuses_to_replace_a_foreign_folder(engine, tmp_path):
    from gif_core.errors import InputError

    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="not an evidence package"):
        export_evidence(engine, "some text to trace", keep)
    assert (keep / "notes.txt").read_text() == "precious"


def test_rebuilt_index_is_refused_naming_both_hashes(small_index, encoder, wiki_slice, tmp_path):
    from gif_core.config import BuildConfig
    from gif_core.engine import Engine, build
    from gif_core.errors import IndexFormatError

    index = tmp_path / "idx"
    shutil.copytree(small_index, index)
    copy_engine = Engine.load(index, encoder=encoder, warm=False)
    ev = export_evidence(copy_engine, wiki_slice[5].text, tmp_path / "case", k=3)
    old = copy_engine.manifest_sha256
    build(wiki_slice[:120], index, BuildConfig(ranker_queries=60), encoder=encoder)
    new = hashlib.sha256((index / "manifest.json").read_bytes()).hexdigest()
    assert new != old
    with pytest.raises(IndexFormatError) as info:
        verify_evidence(ev)
    msg = str(info.value)
    assert old in msg and new in msg and "index changed" in msg and "--index" in msg


def test_cli_verify_exit_codes(ev_dir, engine, tmp_path, monkeypatch, capsys):
    from gif_core import cli
    from gif_core.engine import Engine

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: engine))
    assert cli.main(["verify", str(ev_dir)]) == 0
    assert "verified" in capsys.readouterr().out

    def edit(ev):
        ev["attribution"]["results"][1]["bm25"] = 999.0

    assert cli.main(["verify", str(_tampered(ev_dir, tmp_path, edit))]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "results[1]" in out and ".bm25" in out

    assert cli.main(["verify", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_evidence_writes_a_package(engine, wiki_slice, tmp_path, monkeypatch, capsys):
    from gif_core import cli
    from gif_core.engine import Engine

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: engine))
    out = tmp_path / "pkg"
    assert cli.main(["evidence", "IGNORED", "--text", wiki_slice[2].text, "--out", str(out),
                     "-k", "3"]) == 0
    assert (out / "evidence.json").is_file() and "gif verify" in capsys.readouterr().out
    assert cli.main(["evidence", "IGNORED", "--text", "  ", "--out", str(out)]) == 2
