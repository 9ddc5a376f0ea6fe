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


# -- image queries -------------------------------------------------------------------------------

STAMP = 17
"""The indexed stamp traced (as tests/test_app.py and the browser test do)."""


@pytest.fixture(scope="module")
def stamp_engine(stamp_index):
    from gif_core.engine import Engine

    return Engine.load(stamp_index[0])


@pytest.fixture(scope="module")
def stamps(stamp_index):
    out, sources = stamp_index
    indexed = {json.loads(line)["id"]
               for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()}
    return [s for s in sources if s.id in indexed]


@pytest.fixture(scope="module")
def upload(stamps, tmp_path_factory):
    """A copy of an indexed stamp under another name, as a user would have it."""
    from pathlib import Path

    path = tmp_path_factory.mktemp("upload") / "generated.png"
    path.write_bytes(Path(stamps[STAMP].meta["path"]).read_bytes())
    return path


@pytest.fixture(scope="module")
def image_ev(stamp_engine, upload, tmp_path_factory):
    return export_evidence(stamp_engine, upload, tmp_path_factory.mktemp("imgev") / "case", k=K)


def _data_uris(report: str) -> list[str]:
    import re

    return re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', report)


def test_image_export_records_the_image(image_ev, stamp_engine, stamps, upload, stamp_index):
    import base64
    import io

    from PIL import Image

    stamp = stamps[STAMP]
    data = upload.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in image_ev.iterdir()) == ["evidence.json", "query.png",
                                                          "report.html"]
    assert (image_ev / "query.png").read_bytes() == data  # byte for byte
    ev = json.loads((image_ev / "evidence.json").read_text(encoding="utf-8"))
    assert ev["evidence_version"] == 2
    att = ev["attribution"]
    Draft202012Validator(attribution_schema()).validate(att)
    q = ev["query"]
    assert q["modality"] == "image" and "text" not in q
    assert q["sha256"] == sha == att["query_sha256"]
    with Image.open(upload) as im:
        size = im.size
    assert q["image"] == {"file": "query.png", "name": "generated.png", "bytes": len(data),
                          "format": "PNG", "width": size[0], "height": size[1]}
    assert q["k"] == K and q["influence"] is True
    assert att["results"][0]["id"] == stamp.id and not att["abstained"]
    assert att["results"][0]["sha256"] == sha  # the indexed file has the same bytes
    assert att["results"][0]["verbatim"] == pytest.approx(1.0)  # perceptual-hash similarity
    assert len(att["results"]) == K
    assert all(r["influence"] is not None for r in att["results"])
    assert ev["index"]["manifest_sha256"] == stamp_engine.manifest_sha256
    assert ev["index"]["encoder_weights_sha256"] == stamp_engine.encoder.weights_sha256
    index = stamp_index[0].resolve()
    assert ev["reproduce"]["command"] == f"gif query {index} --image query.png -k {K} --json"
    assert ev["reproduce"]["files"] == ["query.png"]
    # the report: thumbnails of the query and of every result as data: URIs, no script
    report = (image_ev / "report.html").read_text(encoding="utf-8")
    uris = _data_uris(report)
    assert len(uris) == 1 + K
    for uri in uris[:2]:  # the query and the top source are the same stamp
        with Image.open(io.BytesIO(base64.b64decode(uri))) as thumb:
            assert thumb.format == "JPEG"
            assert max(thumb.size) == min(160, max(size))
    assert "<script" not in report
    assert "img-src data:" in report and "default-src 'none'" in report
    assert f"Likely source: <code>{stamp.id}</code>" in report
    assert f'class="thumb source-thumb" data-id="{stamp.id}"' in report
    assert "perceptual-hash similarity" in report and "not legal proof of" in report
    assert "does not show that the image is original" in report
    assert "characters" not in report and "query.txt" not in report
    assert sha in report and "generated.png" in report


def test_image_evidence_verifies_and_its_command_reproduces(image_ev, stamp_engine, monkeypatch,
                                                            capsys):
    import shlex

    from gif_core import cli
    from gif_core.engine import Engine

    report = verify_evidence(image_ev, engine=stamp_engine)
    assert report.ok, report.summary()
    ev = json.loads((image_ev / "evidence.json").read_text(encoding="utf-8"))
    assert report.top_id == ev["attribution"]["results"][0]["id"]
    assert report.checked_results == K
    # the recorded command, run in the package folder, gives the same ranking and scores
    monkeypatch.chdir(image_ev)
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: stamp_engine))
    argv = shlex.split(ev["reproduce"]["command"])
    assert argv[0] == "gif"
    assert cli.main(argv[1:]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in out["results"]] == [r["id"] for r in ev["attribution"]["results"]]
    for a, b in zip(out["results"], ev["attribution"]["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    assert out["query_sha256"] == ev["query"]["sha256"]
    # and `gif verify` from the CLI
    assert cli.main(["verify", str(image_ev)]) == 0
    assert "verified: 5 result(s)" in capsys.readouterr().out


def test_flipped_byte_in_query_image_fails_naming_it(image_ev, stamp_engine, tmp_path):
    dst = tmp_path / "tampered"
    shutil.copytree(image_ev, dst)
    data = bytearray((dst / "query.png").read_bytes())
    data[len(data) // 2] ^= 0x01
    (dst / "query.png").write_bytes(bytes(data))
    report = verify_evidence(dst, engine=stamp_engine)
    assert not report.ok
    first = report.differences[0]
    assert first.startswith(f"query.png: the stored query image hashes to "
                            f"{hashlib.sha256(bytes(data)).hexdigest()}")
    assert "was changed or replaced after export" in first
    assert "MISMATCH" in report.summary() and "query.png" in report.summary()


def test_replaced_query_image_fails_with_a_new_ranking(image_ev, stamp_engine, stamps, tmp_path):
    from pathlib import Path

    dst = tmp_path / "replaced"
    shutil.copytree(image_ev, dst)
    other = stamps[3]
    (dst / "query.png").write_bytes(Path(other.meta["path"]).read_bytes())
    report = verify_evidence(dst, engine=stamp_engine)
    assert not report.ok
    assert report.differences[0].startswith("query.png: the stored query image hashes to")
    assert any(d.startswith("attribution.query_sha256") and "the query image hashes to" in d
               for d in report.differences)
    assert any("ranking" in d for d in report.differences)
    assert report.top_id == other.id


def test_missing_query_image_is_a_clear_error(image_ev, stamp_engine, tmp_path):
    from gif_core.errors import InputError

    dst = tmp_path / "no-image"
    shutil.copytree(image_ev, dst)
    (dst / "query.png").unlink()
    with pytest.raises(InputError, match=r"the query image query\.png is missing from") as info:
        verify_evidence(dst, engine=stamp_engine)
    assert "Put the original file back as query.png" in str(info.value)
    with pytest.raises(InputError, match="missing"):
        verify_evidence(dst / "evidence.json", engine=stamp_engine)
    # the same in a .zip
    ev, _ = load_evidence(image_ev)
    zipped = tmp_path / "no-image.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("evidence.json", json.dumps(ev))
    with pytest.raises(InputError, match=r"query\.png is missing"):
        verify_evidence(zipped, engine=stamp_engine)


def test_query_image_name_cannot_leave_the_package(image_ev, stamp_engine, tmp_path):
    from gif_core.errors import InputError

    def edit(ev):
        ev["query"]["image"]["file"] = "../generated.png"

    with pytest.raises(InputError, match=r"must be query\.EXT inside the package"):
        verify_evidence(_tampered(image_ev, tmp_path, edit), engine=stamp_engine)


def test_image_zip_round_trips(stamp_engine, stamps, tmp_path):
    from pathlib import Path

    data = Path(stamps[30].meta["path"]).read_bytes()
    out = export_evidence(stamp_engine, data, tmp_path / "case", k=3, zip=True, name="x.png")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["evidence.json", "query.png", "report.html"]
        assert zf.read("query.png") == data
    ev, query_txt = load_evidence(out)
    assert query_txt is None and ev["query"]["image"]["name"] == "x.png"
    assert ev["attribution"]["results"][0]["id"] == stamps[30].id
    assert verify_evidence(out, engine=stamp_engine).ok


def test_abstained_image_query_is_recorded_as_no_source(stamp_engine, tmp_path):
    """A photo that is not in the stamp index: the package records the abstention, and its
    report says no source was established; the abstention verifies like any result."""
    from gif_core.image_data import fashion_mnist_corpus

    photo = fashion_mnist_corpus(1).sources[0].read()  # a 28×28 photo of a T-shirt
    out = export_evidence(stamp_engine, photo, tmp_path / "case", k=3, name="shirt.png")
    ev = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert ev["attribution"]["abstained"] is True
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "No confident source. GIF abstains" in report
    assert "nearest images, not established sources" in report
    assert "Likely source" not in report
    assert len(_data_uris(report)) == 4
    verified = verify_evidence(out, engine=stamp_engine)
    assert verified.ok, verified.summary()


def test_bad_image_queries_are_refused(stamp_engine, engine, stamps, tmp_path):
    from pathlib import Path

    from gif_core.errors import InputError
    from gif_core.evidence import write_package
    from gif_core.images import ImageError

    with pytest.raises(ImageError, match="not an image Pillow can read"):
        export_evidence(stamp_engine, b"plain text, not a picture", tmp_path / "a")
    with pytest.raises(ImageError, match="no such file"):
        export_evidence(stamp_engine, tmp_path / "missing.png", tmp_path / "b")
    data = Path(stamps[0].meta["path"]).read_bytes()
    with pytest.raises(InputError, match="holds texts; evidence for an image query needs an "
                                         "image index"):
        export_evidence(engine, data, tmp_path / "c")
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())
    # a package is written only with the bytes that were traced
    out = export_evidence(stamp_engine, data, tmp_path / "d", k=2)
    ev, _ = load_evidence(out)
    with pytest.raises(InputError, match="needs the query image's bytes"):
        write_package(ev, tmp_path / "e")
    with pytest.raises(InputError, match="is not the image that was traced"):
        write_package(ev, tmp_path / "e", query_image=data + b"\0")


def test_cli_evidence_for_an_image(stamp_engine, stamps, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from gif_core import cli
    from gif_core.engine import Engine

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: stamp_engine))
    image = Path(stamps[5].meta["path"])
    out = tmp_path / "pkg"
    assert cli.main(["evidence", "IGNORED", "--image", str(image), "--out", str(out),
                     "-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert "(evidence.json, query.png, report.html)" in printed and "gif verify" in printed
    ev = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert ev["query"]["image"]["name"] == image.name
    assert ev["attribution"]["results"][0]["id"] == stamps[5].id
    assert cli.main(["verify", str(out)]) == 0
    capsys.readouterr()
    data = bytearray((out / "query.png").read_bytes())
    data[-20] ^= 0xFF
    (out / "query.png").write_bytes(bytes(data))
    assert cli.main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "MISMATCH" in printed and "query.png: the stored query image hashes to" in printed
    (out / "query.png").unlink()
    assert cli.main(["verify", str(out)]) == 2
    assert "query.png is missing" in capsys.readouterr().err
    assert cli.main(["evidence", "IGNORED", "--image", str(tmp_path / "nope.png"), "--out",
                     str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["evidence", "IGNORED", "--text", "a", "--image", str(image), "--out",
                     str(tmp_path / "x")]) == 2
    assert "exactly one of --text" in capsys.readouterr().err
