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
    assert {"/query", "/evidence", "/info", "/health"} <= set(paths)


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
