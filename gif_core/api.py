"""HTTP backend: a FastAPI app over one loaded index.

    POST /query     {"text": ..., "k": 10, "influence": true}  -> attribution JSON
                    (schema: gif_core/schemas/attribution.schema.json, as `gif query --json`)
    POST /query/image
                    {"image_base64": ..., "name": "photo.png", "k": 10, "influence": true}
                    -> attribution JSON (same schema, as `gif query --image FILE --json`);
                    image index only
    POST /evidence  {"text": ..., "k": 10}   -> the content of an evidence.json
    POST /evidence/image
                    {"image_base64": ..., "name": "photo.png", "k": 10}  -> the content of an
                    image query's evidence.json; the client, which has the image, writes the
                    package with ``gif_core.evidence.write_package(ev, out, query_image=bytes)``
    GET  /info      manifest summary of the index (``image_queries``: whether /query/image and
                    /evidence/image answer)
    GET  /health    {"status": "ok"} (never needs a token)
    GET  /openapi.json, /docs   FastAPI's OpenAPI schema and viewer

The engine is loaded once, when the app is made; requests run in FastAPI's thread pool and are
serialised with a lock, because the engine's torch thread settings are process-global.

An uploaded image gets the checks of the explorer's upload (``app_support.check_image_upload``):
an accepted type by its name's extension, at most ``MAX_IMAGE_UPLOAD_BYTES`` (20 MB) of decoded
bytes, then the decoder's own limits (64 megapixels, damaged or not an image). ``image_base64``
is standard base64 of the file's bytes; a ``data:image/...;base64,`` prefix is accepted.

Errors come back as JSON ``{"error": "..."}``: a user error (:class:`GIFError`) as HTTP 400, a
malformed body as 422, a missing or wrong token as 401, anything else as 500 with no stack trace
(the trace goes to the server log).

``gif serve`` binds 127.0.0.1 by default. Binding any other address needs a bearer token in the
environment variable ``GIF_API_TOKEN`` (:func:`check_bind` refuses otherwise); when a token is
set, every endpoint except ``/health`` needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from . import __version__
from .errors import GIFError, InputError

log = logging.getLogger(__name__)

TOKEN_ENV = "GIF_API_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MIN_TOKEN_CHARS = 16
MAX_K = 100
OPEN_PATHS = frozenset({"/health"})


class QueryBody(BaseModel):
    text: str = Field(description="the model output to trace")
    k: int = Field(10, ge=1, le=MAX_K, description="results returned")
    influence: bool = Field(True, description="compute influence evidence")


class EvidenceBody(BaseModel):
    text: str = Field(description="the model output to trace")
    k: int = Field(10, ge=1, le=MAX_K, description="results recorded")


class ImageQueryBody(BaseModel):
    image_base64: str = Field(description="the image file's bytes, base64-encoded (a "
                                          "data:image/...;base64, prefix is accepted)")
    name: str = Field("query.png", min_length=1, max_length=255,
                      description="the file's name; its extension must be an accepted image "
                                  "type (png, jpg, jpeg, gif, webp, bmp, tif, tiff)")
    k: int = Field(10, ge=1, le=MAX_K, description="results returned")
    influence: bool = Field(True, description="compute influence evidence")


class ImageEvidenceBody(BaseModel):
    image_base64: str = Field(description="the image file's bytes, base64-encoded")
    name: str = Field("query.png", min_length=1, max_length=255,
                      description="the file's name (recorded in the evidence)")
    k: int = Field(10, ge=1, le=MAX_K, description="results recorded")


_DATA_URI = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,")


def decode_image_body(image_base64: str, name: str) -> bytes:
    """The bytes of an uploaded image, after the explorer's upload checks (type by name, size,
    and that it decodes).

    Raises:
        InputError: not base64, or the upload checks refuse it; an
            :class:`~gif_core.images.ImageError` naming ``name`` when it does not decode.
    """
    from .app_support import MAX_IMAGE_UPLOAD_BYTES, check_image_upload

    s = image_base64.strip()
    m = _DATA_URI.match(s)
    if m:
        s = s[m.end():]
    # refuse an oversized body before decoding it (4 base64 characters per 3 bytes)
    if len(s) > 4 * (MAX_IMAGE_UPLOAD_BYTES // 3 + 1) + 4:
        raise InputError(f"{name!r} is over {MAX_IMAGE_UPLOAD_BYTES:,} bytes (its base64 has "
                         f"{len(s):,} characters); the limit is {MAX_IMAGE_UPLOAD_BYTES:,} "
                         f"bytes. Re-encode it smaller (e.g. as JPEG or at a lower resolution).")
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"image_base64 is not valid base64 ({exc}). Send the file's bytes "
                         f"base64-encoded, e.g. `base64 -w0 photo.png`.") from None
    check_image_upload(name, data)
    from .images import decode_image

    decode_image(data, where=name, max_side=64)  # a bad image is named by its file name
    return data


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a strong bearer token.

    Raises:
        InputError: ``host`` is reachable from other machines and ``token`` is unset or short.
    """
    if is_loopback(host):
        return
    if not token:
        raise InputError(
            f"--host {host} exposes the API beyond this machine, so it needs a bearer token: set "
            f"{TOKEN_ENV} (e.g. `export {TOKEN_ENV}=$(python -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))')`) and send `Authorization: Bearer <token>`. "
            f"Or keep the default --host {DEFAULT_HOST}.")
    if len(token) < MIN_TOKEN_CHARS:
        raise InputError(
            f"{TOKEN_ENV} has {len(token)} characters; a token guarding --host {host} needs at "
            f"least {MIN_TOKEN_CHARS}. Use a random one, e.g. "
            f"`python -c 'import secrets; print(secrets.token_urlsafe(32))'`.")


def manifest_summary(engine) -> dict[str, Any]:
    """What GET /info returns: the index's identity and size, not its full manifest."""
    m = engine.manifest
    counts = m.get("counts", {})
    return {
        "index": str(Path(engine.directory).resolve()),
        "manifest_sha256": engine.manifest_sha256,
        "format_version": m.get("format_version"),
        "index_version": m.get("index_version"),
        "modality": m.get("modality"),
        "corpus": m.get("corpus"),
        "created_unix": m.get("created_unix"),
        "samples": counts.get("samples"),
        "clusters": counts.get("clusters"),
        "probe_params": counts.get("probe_params"),
        "projection_dim": counts.get("projection_dim"),
        "encoder": m.get("encoder"),
        "faiss_factory": m.get("faiss_factory"),
        "built_with": m.get("versions"),
        "abstention_threshold": getattr(engine.ranker, "threshold", None),
        "device": str(engine.device),
        "image_queries": m.get("modality") == "image",
    }


MAX_BODY_BYTES = 32_000_000
"""Largest request body read: a 20 MB image as base64 in JSON, or a 1,000,000-character text
with every character escaped, fits; anything larger is refused (413) before it is parsed."""


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes with 413 as soon as its declared
    length (or, for a chunked body, the bytes read so far) passes the limit, before the app
    parses any of it, so an oversized request never sits whole in memory."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        if declared is not None:
            # the server holds the client to its declared length
            return await self.app(scope, receive, send)
        # no declared length (chunked): read the body here, up to the limit, before the app
        # sees any of it; past the limit the app is never called and what was read is dropped
        messages, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            seen += len(message.get("body", b""))
            if seen > self.limit:
                messages.clear()
                return await self._refuse(send)
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps({"error": f"request body over {self.limit:,} bytes; images are "
                                    f"limited to 20,000,000 bytes before base64 and texts to "
                                    f"1,000,000 characters."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(index_dir: str | Path, *, token: str | None = None, engine=None,
               device: str = "auto"):
    """Make the FastAPI app for the index at ``index_dir``.

    Args:
        index_dir: the index folder; loaded once, here.
        token: when set, every endpoint except /health needs ``Authorization: Bearer <token>``.
        engine: an already loaded engine for ``index_dir`` (tests, embedding); skips loading.
        device: device for loading the engine.
    """
    from .evidence import build_evidence, validate_attribution

    if engine is None:
        from .engine import Engine

        engine = Engine.load(index_dir, device=device)
    lock = threading.Lock()

    app = FastAPI(
        title="GIF provenance API", version=__version__,
        description="Trace model outputs to the training samples they most likely came from. "
                    "Attribution JSON follows gif_core/schemas/attribution.schema.json.")
    app.state.engine = engine
    app.state.lock = lock
    app.add_middleware(BodyLimit)

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    if token:
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def require_token(request: Request, call_next):
            if request.url.path not in OPEN_PATHS:
                got = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(got, expected):
                    return error(401, "missing or wrong bearer token: send the header "
                                      "`Authorization: Bearer <token>` with the server's "
                                      f"{TOKEN_ENV}.", **{"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    @app.exception_handler(GIFError)
    async def gif_error(request: Request, exc: GIFError):
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        example = ('{"image_base64": "...", "name": "photo.png", "k": 10}'
                   if request.url.path.endswith("/image") else '{"text": "...", "k": 10}')
        return error(422, "invalid request: " + "; ".join(parts) + f". Send JSON like {example}.")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, "internal error; the server log has the details.")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return manifest_summary(engine)

    @app.post("/query")
    def query(body: QueryBody) -> JSONResponse:
        with lock:
            att = engine.attribute(body.text, k=body.k, influence=body.influence).to_dict()
        validate_attribution(att)
        return JSONResponse(att)

    @app.post("/evidence")
    def evidence(body: EvidenceBody) -> JSONResponse:
        with lock:
            ev = build_evidence(engine, body.text, k=body.k)
        return JSONResponse(ev)

    @app.post("/query/image")
    def query_image(body: ImageQueryBody) -> JSONResponse:
        data = decode_image_body(body.image_base64, body.name)
        with lock:
            att = engine.attribute_image(data, k=body.k, influence=body.influence).to_dict()
        validate_attribution(att)
        return JSONResponse(att)

    @app.post("/evidence/image")
    def evidence_image(body: ImageEvidenceBody) -> JSONResponse:
        data = decode_image_body(body.image_base64, body.name)
        with lock:
            ev = build_evidence(engine, data, k=body.k, name=body.name)
        return JSONResponse(ev)

    return app


def serve(index_dir: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, device: str = "auto", log_level: str = "info") -> None:
    """Check the bind address, load the index and run uvicorn until interrupted."""
    import uvicorn

    check_bind(host, token)
    if not 0 < port < 65536:
        raise InputError(f"--port {port} is out of range; use 1-65535.")
    app = create_app(index_dir, token=token, device=device)
    log.info("serving %s on http://%s:%d (token %s)", index_dir, host, port,
             "required" if token else "not required")
    uvicorn.run(app, host=host, port=port, log_level=log_level)
