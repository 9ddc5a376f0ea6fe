"""HTTP backend through FastAPI's TestClient (no socket is opened)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from gif_core.api import check_bind, create_app, is_loopback
from gif_core.errors import InputError
from gif_core.evidence import attribution_schema

TOKEN = "t0ken-for-tests-0123456789"


@pytest.fixture(scope="module")
def client(small_index, engine):
    return TestClient(create_app(small_index, engine=engine))


@pytest.fixture(scope="module")
def guarded(small_index, engine):
    return TestClient(create_app(small_index, token=TOKEN, engine=engine))


def test_health_and_info(client, engine, wiki_slice):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["samples"] == len(wiki_slice)
    assert info["manifest_sha256"] == engine.manifest_sha256
    assert info["encoder"]["weights_sha256"] == engine.encoder.weights_sha256


def test_query_returns_the_source_in_schema(client, wiki_slice):
    sample = wiki_slice[21]
    r = client.post("/query", json={"text": sample.text, "k": 4})
    assert r.status_code == 200, r.text
    att = r.json()
    Draft202012Validator(attribution_schema()).validate(att)
    assert att["results"][0]["id"] == sample.id
    assert len(att["results"]) == 4
    assert att["results"][0]["influence"] is not None


def test_query_without_influence(client, wiki_slice):
    att = client.post("/query", json={"text": wiki_slice[4].text, "k": 2,
                                      "influence": False}).json()
    assert att["results"][0]["influence"] is None and att["solver"] == {}


@pytest.mark.parametrize("body, status, words", [
    ({"text": "   ", "k": 3}, 400, "empty"),
    ({"k": 3}, 422, "text"),
    ({"text": "hello", "k": 0}, 422, "k"),
    ({"text": 12}, 422, "text"),
])
def test_bad_input_is_a_readable_error(client, body, status, words):
    r = client.post("/query", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert words in err and "Traceback" not in err


def test_malformed_json_is_422(client):
    r = client.post("/query", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()


def test_evidence_endpoint(client, engine, wiki_slice):
    sample = wiki_slice[9]
    r = client.post("/evidence", json={"text": sample.text, "k": 3})
    assert r.status_code == 200, r.text
    ev = r.json()
    Draft202012Validator(attribution_schema()).validate(ev["attribution"])
    assert ev["attribution"]["results"][0]["id"] == sample.id
    assert ev["index"]["manifest_sha256"] == engine.manifest_sha256
    assert "--queries query.jsonl -k 3 --json" in ev["reproduce"]["command"]


def test_openapi_lists_the_endpoints(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/query", "/evidence", "/query/image", "/evidence/image", "/info",
            "/health"} <= set(paths)


def test_token_required_when_set(guarded, wiki_slice):
    body = {"text": wiki_slice[1].text, "k": 1}
    r = guarded.post("/query", json=body)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert guarded.post("/query", json=body,
                        headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/info").status_code == 401
    assert guarded.get("/openapi.json").status_code == 401
    assert guarded.get("/health").status_code == 200
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = guarded.post("/query", json=body, headers=auth)
    assert ok.status_code == 200 and ok.json()["results"][0]["id"] == wiki_slice[1].id
    assert guarded.get("/info", headers=auth).status_code == 200


def test_bind_check():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(InputError, match="GIF_API_TOKEN"):
            check_bind(host, None)
    with pytest.raises(InputError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    check_bind("0.0.0.0", TOKEN)


def test_serve_refuses_public_bind_without_token(monkeypatch, capsys, tmp_path):
    import gif_core.api as api
    from gif_core import cli

    def must_not_serve(*args, **kwargs):
        raise AssertionError("a server was about to start")

    monkeypatch.setattr(api, "serve", must_not_serve)
    monkeypatch.delenv("GIF_API_TOKEN", raising=False)
    assert cli.main(["serve", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "GIF_API_TOKEN" in err and "127.0.0.1" in err


# -- image queries -------------------------------------------------------------------------------

STAMP = 17


@pytest.fixture(scope="module")
def stamp_engine(stamp_index):
    from gif_core.engine import Engine

    return Engine.load(stamp_index[0])


@pytest.fixture(scope="module")
def image_client(stamp_index, stamp_engine):
    return TestClient(create_app(stamp_index[0], engine=stamp_engine))


@pytest.fixture(scope="module")
def stamp(stamp_index):
    import json

    out, sources = stamp_index
    indexed = {json.loads(line)["id"]
               for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()}
    return [s for s in sources if s.id in indexed][STAMP]


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _stamp_bytes(stamp) -> bytes:
    from pathlib import Path

    return Path(stamp.meta["path"]).read_bytes()


def test_image_index_says_it_takes_images(image_client, client):
    assert image_client.get("/info").json()["image_queries"] is True
    assert image_client.get("/info").json()["modality"] == "image"
    assert client.get("/info").json()["image_queries"] is False


def test_image_query_returns_the_source_in_schema(image_client, stamp):
    import hashlib

    data = _stamp_bytes(stamp)
    r = image_client.post("/query/image", json={"image_base64": _b64(data),
                                                "name": "generated.png", "k": 4})
    assert r.status_code == 200, r.text
    att = r.json()
    Draft202012Validator(attribution_schema()).validate(att)
    assert att["results"][0]["id"] == stamp.id and len(att["results"]) == 4
    assert att["query_sha256"] == hashlib.sha256(data).hexdigest()
    assert att["results"][0]["influence"] is not None and not att["abstained"]
    # a data: URI is accepted as it is; influence can be skipped
    r = image_client.post("/query/image", json={
        "image_base64": "data:image/png;base64," + _b64(data), "k": 2, "influence": False})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == stamp.id
    assert r.json()["results"][0]["influence"] is None


def test_image_evidence_endpoint_writes_a_package_that_verifies(image_client, stamp_engine,
                                                                stamp, tmp_path):
    import zipfile

    from gif_core.evidence import verify_evidence, write_package

    data = _stamp_bytes(stamp)
    r = image_client.post("/evidence/image", json={"image_base64": _b64(data),
                                                   "name": "generated.png", "k": 3})
    assert r.status_code == 200, r.text
    ev = r.json()
    Draft202012Validator(attribution_schema()).validate(ev["attribution"])
    assert ev["query"]["modality"] == "image" and ev["query"]["image"]["name"] == "generated.png"
    assert ev["attribution"]["results"][0]["id"] == stamp.id
    assert ev["index"]["manifest_sha256"] == stamp_engine.manifest_sha256
    assert "--image query.png -k 3 --json" in ev["reproduce"]["command"]
    assert ev["thumbnails"]["query"] and ev["thumbnails"]["results"][0]["jpeg_base64"]
    out = write_package(ev, tmp_path / "case.zip", zip=True, query_image=data)
    with zipfile.ZipFile(out) as zf:
        assert zf.read("query.png") == data
        assert zf.read("report.html").count(b'<img src="data:image/jpeg;base64,') == 4
    report = verify_evidence(out, engine=stamp_engine)
    assert report.ok, report.summary()


@pytest.mark.parametrize("body, status, words", [
    ({"image_base64": "not base64!", "name": "a.png"}, 400, "not valid base64"),
    ({"image_base64": _b64(b"%PDF-1.7"), "name": "scan.pdf"}, 400,
     "'scan.pdf' is a .pdf file; give an image (.png"),
    ({"image_base64": _b64(b"a text file with an image's name"), "name": "notes.png"}, 400,
     "notes.png: not an image Pillow can read"),
    ({"image_base64": "", "name": "empty.png"}, 400, "empty file (0 bytes)"),
    ({"name": "a.png"}, 422, "image_base64"),
    ({"image_base64": _b64(b"x"), "k": 0}, 422, "k"),
])
def test_bad_image_input_is_a_readable_error(image_client, body, status, words):
    for path in ("/query/image", "/evidence/image"):
        r = image_client.post(path, json=body)
        assert r.status_code == status, (path, r.text)
        err = r.json()["error"]
        assert words in err and "Traceback" not in err, err
        if status == 422:
            assert '"image_base64": "..."' in err


def test_image_size_limit_is_the_uploads(image_client, stamp, monkeypatch):
    from gif_core import app_support as sup

    data = _stamp_bytes(stamp)
    monkeypatch.setattr(sup, "MAX_IMAGE_UPLOAD_BYTES", len(data) - 1)
    r = image_client.post("/query/image", json={"image_base64": _b64(data), "name": "s.png"})
    assert r.status_code == 400
    assert f"the limit is {len(data) - 1:,} bytes" in r.json()["error"]
    # a body far over the limit is refused before it is decoded
    r = image_client.post("/query/image", json={"image_base64": "A" * (3 * len(data)),
                                                "name": "s.png"})
    assert r.status_code == 400 and "its base64 has" in r.json()["error"]


def test_image_query_on_a_text_index_is_refused(client, stamp):
    r = client.post("/query/image", json={"image_base64": _b64(_stamp_bytes(stamp)),
                                          "name": "s.png"})
    assert r.status_code == 400 and "an image query needs an image index" in r.json()["error"]
    r = client.post("/evidence/image", json={"image_base64": _b64(_stamp_bytes(stamp))})
    assert r.status_code == 400 and "needs an image index" in r.json()["error"]


def test_oversized_bodies_are_refused_before_parsing():
    """A body over the limit gets 413 whether its length is declared or it arrives chunked; the
    handler never sees it."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from gif_core.api import MAX_BODY_BYTES, BodyLimit

    assert MAX_BODY_BYTES > 4 * 20_000_000 / 3  # a 20 MB image as base64 fits
    seen = []
    app = FastAPI()
    app.add_middleware(BodyLimit, limit=1000)

    @app.post("/q")
    def q(body: dict):
        seen.append(len(body["text"]))
        return {"n": len(body["text"])}

    client = TestClient(app)
    assert client.post("/q", json={"text": "a" * 10}).json() == {"n": 10}
    r = client.post("/q", json={"text": "a" * 5000})
    assert r.status_code == 413 and "over 1,000 bytes" in r.json()["error"]

    def chunks():
        yield b'{"text": "'
        for _ in range(10):
            yield b"a" * 500
        yield b'"}'

    r = client.post("/q", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert seen == [10]
