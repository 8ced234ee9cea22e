"""Hostile input, one test per case (issue 11, item 4): each is refused with a clear error in the
provider's shape, audited where the gateway audits, never reaches the upstream when refused, and
leaks nothing (no stack trace, no file, no key).

Each test fails when the protection it leans on is removed (checked by removing each at run time):

- malformed / deeply nested JSON: `adapters.surface.load_json_object` (parse errors, RecursionError,
  `MAX_JSON_DEPTH`), on the OpenAI, BFL, Replicate and verify routes;
- huge bodies: the limit enforced while reading (`read_limited`, `read_part`, the pass-through's
  `_body`); huge headers: aiohttp's own parser limits (8190 bytes a line, a bounded header count);
- decompression bombs: `classifiers.decode.open_image` (dimensions checked before decoding);
  verification never decodes pixels at all;
- polyglot and mislabelled images: sniffing the bytes, never the label (`sniff_media_type`), and
  `stages.upstream.strip_trailing_data` (nothing after an image's end marker is released);
- multipart abuse: `adapters.surface.open_multipart/next_part/read_part` and the field limits;
  upload filenames: `adapters.surface.safe_filename`;
- asset path traversal and forged URLs: `stores.assets` (name pattern, HMAC, expiry);
- header injection: the request-id pattern (`app._REQUEST_ID`), aiohttp's header parser, and
  `stability_surface._header_token` for upstream values that become headers;
- SSRF: `fetch.SafeFetcher` (verify URLs, every redirect hop), `adapters.http.ImageFetcher` (image URLs
  an upstream returns, OpenAI's included), `webhooks.WebhookSender.check`;
- keys: `stages.authenticate.Authenticate`, `admin.routes.require_admin`; tenants: the tenant checks
  of `admin.routes` and `jobs.JobRunner.poll`.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from PIL import ImageFile
from yarl import URL

from policies.decisions import Action, Decision
from provenance.media import trailing_bytes
from proxy.app import GATEWAY, StageDeps, create_app, default_stages
from proxy.exchange import Exchange
from proxy.fetch import SafeFetcher, public_only
from proxy.pipeline import BaseStage, Stage
from proxy.settings import Settings
from proxy.stages.factory import full_stages
from proxy.stores.assets import AssetNotFound
from tests.classifiers.conftest import TINY_ARCHITECTURE, TinyModels, tiny_models  # noqa: F401  (fixture)
from tests.conftest import ADMIN_KEY, OTHER_TENANT_KEY, TENANT_KEY, digest, make_settings
from tests.fakes.bfl import FakeBFL
from tests.fakes.openai_upstream import FakeOpenAI, make_image
from tests.fakes.provider_harness import provider_settings, serve
from tests.fakes.stability import FakeStability
from tests.reliability.hostile_images import BOMBS, HTML_PAYLOAD, SVG_PAYLOAD, contains_payload, zip_payload

AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}
OTHER_ADMIN_KEY = "sk-test-globex-admin"


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def call(method: str, url: str, **kwargs: Any) -> Answer:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, **kwargs) as response:
            return Answer(response.status, CIMultiDict(response.headers), await response.read())


def assert_clean(answer: Answer) -> None:
    """Nothing of the gateway's insides in an answer."""
    text = answer.body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "/' not in text and "site-packages" not in text


def assert_openai_error(answer: Answer, status: int, code: str | None = None) -> dict[str, Any]:
    assert answer.status == status, answer.body[:500]
    assert_clean(answer)
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["type"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]


async def audit_record(server: TestServer, answer: Answer) -> dict[str, Any]:
    record = await server.app[GATEWAY].audit.get(answer.headers["X-Imagegate-Audit-Id"])
    assert record is not None, "a refused request must still leave its audit record"
    return record  # type: ignore[no-any-return]


@pytest.fixture
async def gateway(tmp_path: Path, fake_openai: tuple[FakeOpenAI, str], start_gateway: Any, upstream_key: str) -> tuple[TestServer, str, FakeOpenAI]:
    fake, upstream_url = fake_openai
    server, base = await start_gateway(make_settings(tmp_path, upstream_url))
    return server, base, fake


def edit_form(image: bytes, *, filename: str = "in.png", content_type: str = "image/png", model: str = "gpt-image-1") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("prompt", "make it blue")
    form.add_field("model", model)
    form.add_field("image", image, filename=filename, content_type=content_type)
    return form


class Canary:
    """A loopback TCP listener counting connections: proof that nothing was (or was) connected to."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Canary:
        async def touched(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.hits += 1
            writer.close()

        self._server = await asyncio.start_server(touched, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class StaticResolver(AbstractResolver):
    """Names resolved from a table, never by DNS."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        address = self.table.get(host)
        if address is None:
            raise OSError(f"{host} does not resolve")
        kind = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [{"hostname": host, "host": address, "port": port, "family": kind, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


# -- malformed and deeply nested JSON -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"prompt": "a cat", "model": "gpt-image-1"', "invalid_json"),  # truncated
        (b'{"prompt": "a cat"} trailing', "invalid_json"),
        (b'{"prompt": "\xc3\x28 a cat"}', "invalid_json"),  # not UTF-8
        (b"", "invalid_json"),
        (b'["prompt", "a cat"]', "invalid_json"),  # not an object
        (b'"a cat"', "invalid_json"),
        (b'{"prompt": NaN, "model": "gpt-image-1"}', "invalid_value"),
        (b'{"prompt": {"$gt": ""}, "model": "gpt-image-1"}', "invalid_value"),
        (b'{"prompt": "a cat", "n": 1e400}', "invalid_value"),
    ],
    ids=["truncated", "trailing-garbage", "not-utf8", "empty", "array", "string", "nan-prompt", "object-prompt", "huge-n"],
)
async def test_malformed_json_is_refused_and_audited(gateway: Any, body: bytes, code: str) -> None:
    server, base, fake = gateway
    answer = await call("POST", f"{base}/images/generations", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(answer, 400, code)
    record = await audit_record(server, answer)
    assert record["tenant"] == "acme" and record["error"]["code"] == code and record["outcome"] == "rejected"
    assert fake.received == []


def nested(depth: int, prefix: str = '{"prompt": "a cat", "deep": ') -> bytes:
    return (prefix + "[" * depth + "]" * depth + "}").encode()


@pytest.mark.parametrize("depth", [40, 935, 100_000], ids=["over-limit", "parses-but-too-deep-to-re-encode", "overflows-parser"])
async def test_deeply_nested_json_is_a_400_on_every_json_route(tmp_path: Path, fake_openai: Any, start_gateway: Any, upstream_key: str, depth: int) -> None:
    fake, upstream_url = fake_openai
    server, base = await start_gateway(make_settings(tmp_path, upstream_url))
    root = base.removesuffix("/v1")
    answer = await call("POST", f"{base}/images/generations", data=nested(depth), headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(answer, 400, "invalid_json")
    assert (await audit_record(server, answer))["error"]["code"] == "invalid_json"
    verify = await call("POST", f"{base}/provenance/verify", data=nested(depth, '{"urls": '), headers={**AUTH, "Content-Type": "application/json"})
    assert_openai_error(verify, 400, "invalid_json")
    bfl = await call("POST", f"{root}/bfl/v1/flux-dev", data=nested(depth), headers={"x-key": TENANT_KEY, "Content-Type": "application/json"})
    assert bfl.status == 422 and "detail" in bfl.json() and "JSON" in bfl.json()["detail"]
    body = b'{"version": "a/b", "input": ' + nested(depth) + b"}"
    replicate = await call("POST", f"{root}/replicate/v1/predictions", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert replicate.status == 422 and replicate.json()["status"] == 422
    for answer in (bfl, replicate):
        assert_clean(answer)
        assert (await audit_record(server, answer))["status"] == 422
    assert fake.received == []


# -- huge headers and bodies -----------------------------------------------------------------------


async def raw_http(port: int, request: bytes) -> bytes:
    """Send raw bytes (what no well-behaved client would send) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_huge_headers_are_refused_before_the_application(gateway: Any) -> None:
    server, base, fake = gateway
    port = server.port
    assert port is not None
    body = b'{"prompt": "a cat"}'
    head = f"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TENANT_KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    one_huge = await raw_http(port, (head + "X-Imagegate-User: " + "u" * 20_000 + "\r\n\r\n").encode() + body)
    many = await raw_http(port, (head + "".join(f"X-Filler-{i}: v\r\n" for i in range(500)) + "\r\n").encode() + body)
    huge_line = await raw_http(port, b"GET /v1/images/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for answer in (one_huge, many, huge_line):
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.split()[1] in (b"400", b"413", b"414", b"431"), status_line
        assert b"Traceback" not in answer and TENANT_KEY.encode() not in answer
    assert fake.received == []
    # A long key is just a wrong key, in OpenAI's shape; the gateway still serves normal requests.
    long_key = await call("POST", f"{base}/images/generations", json={"prompt": "a cat"}, headers={"Authorization": "Bearer " + "k" * 7000})
    assert_openai_error(long_key, 401, "invalid_api_key")
    fine = await call("POST", f"{base}/images/generations", json={"prompt": "a cat"}, headers=AUTH)
    assert fine.status == 200


HUGE_BODY_ROUTES = [
    ("/v1/images/generations", "json"),
    ("/v1/images/generations", "chunked-json"),
    ("/v1/images/edits", "chunked-multipart"),
    ("/v1/provenance/verify", "chunked-image"),
    ("/v1/provenance/verify", "chunked-json"),
    ("/v1/provenance/verify", "chunked-multipart"),
    ("/stability/v2beta/stable-image/generate/core", "chunked-multipart"),
    ("/bfl/v1/flux-dev", "chunked-json"),
    ("/replicate/v1/predictions", "chunked-json"),
    ("/v1/files", "chunked-multipart"),  # pass-through
]


@pytest.mark.parametrize(("path", "kind"), HUGE_BODY_ROUTES, ids=[f"{path}-{kind}" for path, kind in HUGE_BODY_ROUTES])
async def test_huge_bodies_are_cut_off_and_audited(tmp_path: Path, fake_openai: Any, start_gateway: Any, upstream_key: str, path: str, kind: str) -> None:
    fake, upstream_url = fake_openai
    settings = make_settings(tmp_path, upstream_url, server={"data_dir": str(tmp_path / "d"), "max_body_bytes": 4096})
    server, base = await start_gateway(settings)
    big = b"x" * 20_000

    async def chunks(prefix: bytes, suffix: bytes = b"") -> AsyncIterator[bytes]:
        yield prefix
        for offset in range(0, len(big), 1000):
            yield big[offset : offset + 1000]
        yield suffix

    content_type = {"json": "application/json", "chunked-json": "application/json", "chunked-image": "image/png",
                    "chunked-multipart": "multipart/form-data; boundary=B"}[kind]  # fmt: skip
    if kind == "json":
        data: Any = json.dumps({"prompt": big.decode()}).encode()
    elif kind == "chunked-json":
        data = chunks(b'{"urls": ["', b'"]}') if "verify" in path else chunks(b'{"prompt": "', b'"}')
    elif kind == "chunked-image":
        data = chunks(make_image())
    else:
        data = chunks(b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + make_image(), b"\r\n--B--\r\n")
    headers = {**AUTH, "x-key": TENANT_KEY, "Content-Type": content_type}
    answer = await call("POST", base.removesuffix("/v1") + path, data=data, headers=headers)
    assert answer.status == 413, answer.body[:300]
    assert_clean(answer)
    if path.startswith("/v1/"):
        assert_openai_error(answer, 413, "payload_too_large")
    else:  # Stability, BFL and Replicate say it in their own shapes
        assert b"larger than the limit" in answer.body
    assert (await audit_record(server, answer))["error"]["code"] == "payload_too_large"
    assert fake.received == []


# -- decompression bombs --------------------------------------------------------------------------------


def classifier_section(models: TinyModels) -> dict[str, Any]:
    """The real classifier (a tiny open_clip model) that decodes every input and output image."""
    return {"enabled": True, "required": True, "model": TINY_ARCHITECTURE, "pretrained": None, "checkpoint": str(models.checkpoint)}


@pytest.fixture
async def classifying(tmp_path: Path, fake_openai: Any, start_gateway: Any, upstream_key: str, tiny_models: TinyModels) -> tuple[TestServer, str, FakeOpenAI]:
    fake, upstream_url = fake_openai
    server, base = await start_gateway(make_settings(tmp_path, upstream_url, classifier=classifier_section(tiny_models)), stages=full_stages)
    return server, base, fake


async def test_decompression_bombs_as_edit_inputs_are_refused_before_upstream(classifying: Any) -> None:
    server, base, fake = classifying
    for fmt, bomb in BOMBS.items():
        answer = await call("POST", f"{base}/images/edits", data=edit_form(bomb(), filename=f"bomb.{fmt}"), headers=AUTH)
        error = assert_openai_error(answer, 400, "invalid_image")
        assert "8000x8000" in error["message"] and "limit" in error["message"], (fmt, error)
        assert error["param"] == "image"
        record = await audit_record(server, answer)
        assert record["error"]["code"] == "invalid_image" and record["input_images"][0]["bytes"] < 2000
    assert fake.received == []


async def test_decompression_bombs_from_the_upstream_are_never_released(classifying: Any) -> None:
    server, base, fake = classifying
    for fmt, bomb in BOMBS.items():
        data = bomb()

        async def answer_with_bomb(request: web.Request, data: bytes = data) -> web.Response:
            return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(data).decode()}]})

        fake.handler = answer_with_bomb
        answer = await call("POST", f"{base}/images/generations", json={"prompt": "a lighthouse", "model": "gpt-image-1"}, headers=AUTH)
        error = assert_openai_error(answer, 502, "upstream_bad_response")
        assert "8000x8000" in error["message"], (fmt, error)
        assert base64.b64encode(data)[:40] not in answer.body
        record = await audit_record(server, answer)
        assert record["outcome"] == "error" and [image["released"] for image in record["images"]] == [False]


async def test_decompression_bombs_sent_to_verify_are_never_decoded(classifying: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server, base, _ = classifying
    decoded: list[tuple[int, int]] = []
    original_load = ImageFile.ImageFile.load

    def spying_load(image: ImageFile.ImageFile) -> Any:
        decoded.append(image.size)
        return original_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spying_load)
    for fmt, bomb in BOMBS.items():
        answer = await call("POST", f"{base}/provenance/verify", data=bomb(), headers={**AUTH, "Content-Type": f"image/{fmt}"})
        assert answer.status == 200, answer.body
        report = answer.json()["results"][0]
        assert report["state"] in ("none", "unreadable") and report["media_type"] == f"image/{fmt}"
        assert (await audit_record(server, answer))["operation"] == "verify"
    assert (8000, 8000) not in decoded, "verification decoded the pixels of a bomb"


# -- polyglot and mislabelled images ------------------------------------------------------------------


async def test_mislabelled_input_is_forwarded_as_what_its_bytes_are(gateway: Any) -> None:
    server, base, fake = gateway
    seen: list[tuple[str, str | None]] = []

    async def record_parts(request: web.Request) -> web.Response:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if getattr(part, "filename", None):
                seen.append((part.headers.get("Content-Type", ""), part.filename))
            await part.read()  # type: ignore[union-attr]
        return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(make_image()).decode()}]})

    fake.handler = record_parts
    answer = await call("POST", f"{base}/images/edits", data=edit_form(make_image(), filename="photo.jpg", content_type="image/jpeg"), headers=AUTH)
    assert answer.status == 200, answer.body
    assert seen == [("image/png", "photo.jpg")]  # the label said JPEG; the bytes are a PNG
    record = await audit_record(server, answer)
    assert record["input_images"][0]["media_type"] == "image/png"


@pytest.mark.parametrize("payload", [SVG_PAYLOAD, HTML_PAYLOAD], ids=["svg", "html"])
async def test_svg_or_html_labelled_as_png_is_refused_everywhere(gateway: Any, payload: bytes) -> None:
    server, base, fake = gateway
    as_input = await call("POST", f"{base}/images/edits", data=edit_form(payload, filename="cat.png"), headers=AUTH)
    assert_openai_error(as_input, 400, "invalid_image")
    assert (await audit_record(server, as_input))["error"]["code"] == "invalid_image"
    assert fake.received == []

    async def answer_with_payload(request: web.Request) -> web.Response:
        return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(payload).decode()}]})

    fake.handler = answer_with_payload
    as_output = await call("POST", f"{base}/images/generations", json={"prompt": "a cat", "response_format": "url"}, headers=AUTH)
    assert_openai_error(as_output, 502, "upstream_bad_response")
    assert payload not in as_output.body and (await audit_record(server, as_output))["outcome"] == "error"
    verified = await call("POST", f"{base}/provenance/verify", data=payload, headers={**AUTH, "Content-Type": "image/png"})
    assert verified.status == 200 and verified.json()["results"][0]["state"] == "unreadable"
    assert payload not in verified.body


@pytest.mark.parametrize(
    ("fmt", "payload"),
    [("png", zip_payload()), ("png", HTML_PAYLOAD), ("jpeg", HTML_PAYLOAD), ("jpeg", zip_payload())],
    ids=["png+zip", "png+html", "jpeg+html", "jpeg+zip"],
)
async def test_polyglot_outputs_are_released_without_their_payload(tmp_path: Path, fake_openai: Any, start_gateway: Any, upstream_key: str, fmt: str, payload: bytes) -> None:
    fake, upstream_url = fake_openai
    server, base = await start_gateway(make_settings(tmp_path, upstream_url), stages=full_stages)
    polyglot = make_image(fmt=fmt) + payload

    async def answer_with_polyglot(request: web.Request) -> web.Response:
        return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(polyglot).decode()}]})

    fake.handler = answer_with_polyglot
    inline = await call("POST", f"{base}/images/generations", json={"prompt": "a cat", "output_format": fmt}, headers=AUTH)
    assert inline.status == 200, inline.body
    image = base64.b64decode(inline.json()["data"][0]["b64_json"])
    linked = await call("POST", f"{base}/images/generations", json={"prompt": "a cat", "output_format": fmt, "response_format": "url"}, headers=AUTH)
    served = await call("GET", linked.json()["data"][0]["url"])
    assert served.status == 200
    for released in (image, served.body):
        assert not contains_payload(released)
        assert trailing_bytes(released, f"image/{fmt}") == 0
    record = await audit_record(server, inline)
    assert record["images"][0]["bytes"] == len(image)


# -- multipart abuse ------------------------------------------------------------------------------------


def part(name: str, value: bytes, extra: str = "") -> bytes:
    return f'--B\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode() + value + b"\r\n"


BASICS = part("prompt", b"make it blue") + part("model", b"gpt-image-1")
IMAGE = part("image", make_image(), '; filename="a.png"')


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (BASICS + IMAGE + b"--B--\r\n", "multipart/form-data", 400, "invalid_multipart"),  # no boundary
        (b"this is not multipart at all", "multipart/form-data; boundary=B", 400, "invalid_multipart"),
        (BASICS + b'--B\r\nContent-Disposition: form-data; name="\x1f"\r\n\r\nx\r\n--B--\r\n', "multipart/form-data; boundary=B", 400, "invalid_multipart"),
        (BASICS + IMAGE + b"".join(part(f"f{i}", b"v") for i in range(70)) + b"--B--\r\n", "multipart/form-data; boundary=B", 400, "invalid_multipart"),
        (BASICS + IMAGE * 17 + b"--B--\r\n", "multipart/form-data; boundary=B", 400, None),
        (BASICS + b'--B\r\nContent-Type: multipart/mixed; boundary=C\r\nContent-Disposition: form-data; name="image"\r\n\r\n--C\r\n\r\nx\r\n--C--\r\n--B--\r\n',
         "multipart/form-data; boundary=B", 400, "invalid_multipart"),
        (BASICS + IMAGE + part("user", b"\xff\xfe\xfa") + b"--B--\r\n", "multipart/form-data; boundary=B", 400, None),
        (BASICS + part("image", b"GIF89a" + bytes(40), '; filename="a.gif"') + b"--B--\r\n", "multipart/form-data; boundary=B", 400, "invalid_image"),
        (BASICS + IMAGE, "multipart/form-data; boundary=B", 400, "invalid_multipart"),  # no closing boundary
        (json.dumps({"prompt": "x"}).encode(), "application/json", 415, "unsupported_media_type"),
    ],
    ids=["no-boundary", "garbage", "control-char-in-part-header", "too-many-fields", "too-many-images", "nested", "not-utf8", "gif", "unterminated", "json"],
)
async def test_multipart_abuse_is_refused_and_audited(gateway: Any, body: bytes, content_type: str, status: int, code: str | None) -> None:
    server, base, fake = gateway
    answer = await call("POST", f"{base}/images/edits", data=body, headers={**AUTH, "Content-Type": content_type})
    assert_openai_error(answer, status, code)
    assert (await audit_record(server, answer))["status"] == status
    assert fake.received == []


async def test_hostile_upload_filenames_never_reach_upstream_headers(gateway: Any) -> None:
    server, base, fake = gateway
    names: list[str] = []

    async def record_filenames(request: web.Request) -> web.Response:
        raw = await request.read()
        names.extend(line.decode("latin-1") for line in raw.split(b"\r\n") if line[:1].isalpha() and b":" in line[:40])
        return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(make_image()).decode()}]})

    fake.handler = record_filenames
    hostile = "a%0D%0AX-Injected%3A%201%0D%0A%0D%0A..%2F..%2Fetc%2Fpasswd.png"
    body = BASICS + part("image", make_image(), f"; filename*=utf-8''{hostile}") + b"--B--\r\n"
    answer = await call("POST", f"{base}/images/edits", data=body, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=B"})
    assert answer.status == 200, answer.body
    image_line = next(name for name in names if 'name="image"' in name)
    assert "/" not in image_line.split("filename", 1)[1] and ".png" in image_line
    assert not any(line.lower().startswith("x-injected") for line in names)
    assert (await audit_record(server, answer))["status"] == 200


# -- path traversal in asset URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../url-signing.key", "../outside.png", "{data_dir}/outside.png", "../assets/../outside.png", "outside.png\x00.png"],
    ids=["signing-key", "sibling-file", "absolute-path", "up-and-down", "nul-byte"],
)
async def test_asset_names_never_leave_the_asset_folder(gateway: Any, name: str) -> None:
    server, base, _ = gateway
    assets = server.app[GATEWAY].assets
    data_dir = assets.folder.parent
    name = name.format(data_dir=data_dir)
    await assets.put(make_image(), "image/png")  # the folder exists, as it does once any image was served
    (data_dir / "outside.png").write_bytes(b"\x89PNG\r\n\x1a\nSECRET-OUTSIDE-THE-ASSET-FOLDER")
    secret_file = (data_dir / "url-signing.key").read_bytes()
    expires = int(time.time()) + 600
    # Signed with the gateway's own key: only the name check can stop it.
    query = {"expires": str(expires), "signature": assets.sign(name, expires)}
    url = base + "/assets/" + urllib.parse.quote(name, safe="")
    answer = await call("GET", url, params=query)
    assert answer.status in (403, 404), answer.body[:200]
    assert_openai_error(answer, answer.status)
    assert b"SECRET-OUTSIDE" not in answer.body and secret_file not in answer.body
    with pytest.raises(AssetNotFound):
        await assets.get(name)


async def test_asset_signatures_cannot_be_forged_extended_or_moved(gateway: Any) -> None:
    server, base, _ = gateway
    linked = await call("POST", f"{base}/images/generations", json={"prompt": "a cat", "response_format": "url", "n": 2}, headers=AUTH)
    first, second = (item["url"] for item in linked.json()["data"])
    assert (await call("GET", first)).status == 200
    first_url = URL(first)
    second_name = URL(second).name
    moved = first_url.with_name(second_name)  # the first URL's signature on the second asset
    extended = first_url.update_query(expires=str(int(first_url.query["expires"]) + 86_400))
    expired_at = int(time.time()) - 1
    assets = server.app[GATEWAY].assets
    expired = first_url.update_query(expires=str(expired_at), signature=assets.sign(first_url.name, expired_at))
    tampered = first_url.update_query(signature="0" * 64)
    unsigned = first_url.with_query({})
    for url in (moved, extended, expired, tampered, unsigned):
        answer = await call("GET", str(url))
        assert_openai_error(answer, 403, "invalid_signature")


# -- header injection -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["abc%0d%0aSet-Cookie:%20pwned=1", "a b", "x" * 200, "<script>alert(1)</script>", "café", "id\tSet-Cookie: pwned=1"],
)
async def test_hostile_request_ids_are_replaced_not_echoed(gateway: Any, value: str) -> None:
    server, base, _ = gateway
    answer = await call("POST", f"{base}/images/generations", json={"prompt": "a cat"}, headers={**AUTH, "X-Request-Id": value})
    assert answer.status == 200
    echoed = answer.headers["X-Request-Id"]
    assert echoed != value and echoed.startswith("req_")
    assert (await audit_record(server, answer))["request_id"] == echoed
    good = await call("POST", f"{base}/images/generations", json={"prompt": "a cat"}, headers={**AUTH, "X-Request-Id": "client-42:retry.1"})
    assert good.headers["X-Request-Id"] == "client-42:retry.1"


@pytest.mark.parametrize("header", ["X-Request-Id", "Idempotency-Key", "X-Imagegate-User", "X-Imagegate-Use-Case"])
@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n"], ids=["cr", "lf", "crlf"])
async def test_control_characters_in_echoed_headers_never_split_the_answer(gateway: Any, header: str, separator: bytes) -> None:
    server, _, _ = gateway
    assert server.port is not None
    body = b'{"prompt": "a cat"}'
    request = (
        b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TENANT_KEY}\r\nContent-Length: {len(body)}\r\n".encode()
        + header.encode() + b": abc" + separator + b"Set-Cookie: pwned=1\r\n\r\n" + body
    )
    answer = await raw_http(server.port, request)
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"pwned" not in head and b"set-cookie" not in head
    assert answer.split(b" ", 2)[1] in (b"200", b"400")
    assert b"Traceback" not in answer


async def test_upstream_values_that_become_headers_cannot_split_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStability()

    async def hostile(request: web.Request) -> web.Response:
        image = base64.b64encode(make_image()).decode()
        return web.json_response({"image": image, "finish_reason": "SUCCESS\r\nSet-Cookie: pwned=1", "seed": "7\r\nX-Evil: 1"})

    fake.handler = hostile
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    server = TestServer(create_app(provider_settings(tmp_path, "stability", "stability", upstream_url, ["stable-image-core"])), host="127.0.0.1")
    await server.start_server()
    try:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("prompt", "a lighthouse")
        answer = await call("POST", str(server.make_url("/stability/v2beta/stable-image/generate/core")), data=form, headers={**AUTH, "Accept": "image/*"})
    finally:
        await server.close()
        await upstream.close()
    assert answer.status == 200 and answer.body.startswith(b"\x89PNG")
    assert "Set-Cookie" not in answer.headers and "X-Evil" not in answer.headers
    assert answer.headers["finish-reason"] == "SUCCESS" and "seed" not in answer.headers


# -- SSRF through image URLs ------------------------------------------------------------------------------


def public_or_origin(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Production's rule (public addresses only), plus the test's one 'public' origin at 127.0.0.2."""
    return public_only(address) or str(address) == "127.0.0.2"


async def test_verify_urls_cannot_reach_the_private_network(tmp_path: Path, fake_openai: Any, upstream_key: str) -> None:
    async with Canary() as canary:
        port = canary.port

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(request.query["to"])

        origin_app = web.Application()
        origin_app.router.add_get("/go", redirect)
        origin = TestServer(origin_app, host="127.0.0.2")
        await origin.start_server()
        app = create_app(make_settings(tmp_path, fake_openai[1]))
        names = {"localhost": "127.0.0.1", "rebind.example": "10.0.0.7", "metadata.example": "169.254.169.254",
                 "2130706433": "127.0.0.1", "v6.example": "::1", "origin.example": "127.0.0.2"}  # fmt: skip
        app[GATEWAY].fetcher = SafeFetcher(policy=public_or_origin, resolver=StaticResolver(names))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        hostile = [
            f"http://127.0.0.1:{port}/x.png", f"http://localhost:{port}/x.png", f"http://[::1]:{port}/", f"http://[::ffff:127.0.0.1]:{port}/",
            f"http://rebind.example:{port}/", "http://169.254.169.254/latest/meta-data/",
            "http://metadata.example/computeMetadata/v1/", f"http://v6.example:{port}/", "http://10.0.0.1/", "http://[fd00::1]/",
            "file:///etc/passwd", f"gopher://127.0.0.1:{port}/_", "ftp://example.com/x.png", "http://user:pass@origin.example/x.png",
            f"http://origin.example:{origin.port}/go?to=http://127.0.0.1:{port}/x.png",
            f"http://origin.example:{origin.port}/go?to=http://localhost:{port}/x.png",
        ]  # fmt: skip
        try:
            answer = await call("POST", str(server.make_url("/v1/provenance/verify")), json={"urls": hostile}, headers=AUTH)
            assert answer.status == 200, answer.body
            results = answer.json()["results"]
            assert [result["code"] for result in results] == ["unsafe_url"] * len(hostile), results
            assert all(result["state"] == "unreadable" for result in results)
            record = await audit_record(server, answer)
            assert record["verified"] == {"images": len(hostile), "unreadable": len(hostile)}
            # Numeric host spellings of 127.0.0.1 are refused by the HTTP client itself.
            numeric = [f"http://2130706433:{port}/", f"http://0x7f000001:{port}/", f"http://0177.0.0.1:{port}/"]
            answer = await call("POST", str(server.make_url("/v1/provenance/verify")), json={"urls": numeric}, headers=AUTH)
            assert {result["state"] for result in answer.json()["results"]} == {"unreadable"}
        finally:
            await server.close()
            await origin.close()
        assert canary.hits == 0, "a refused URL was connected to"


async def test_upstream_image_urls_cannot_reach_the_private_network(tmp_path: Path, fake_openai: Any, start_gateway: Any, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    async with Canary() as canary:
        settings = make_settings(tmp_path, upstream_url)
        # An operator allowed `localhost` as the image host: the address it resolves to still decides.
        openai = settings.providers["openai"].model_copy(update={"image_url_hosts": ["localhost", "127.0.0.1"]})
        server, base = await start_gateway(settings.model_copy(update={"providers": {**settings.providers, "openai": openai}}))
        for url in (f"https://localhost:{canary.port}/image.png", f"https://127.0.0.1:{canary.port}/image.png",
                    f"http://localhost:{canary.port}/image.png", f"https://evil.example:{canary.port}/image.png"):  # fmt: skip

            async def answer_with_url(request: web.Request, url: str = url) -> web.Response:
                return web.json_response({"created": 1, "data": [{"url": url}]})

            fake.handler = answer_with_url
            answer = await call("POST", f"{base}/images/generations", json={"prompt": "a cat", "model": "dall-e-3"}, headers=AUTH)
            error = assert_openai_error(answer, 502)
            assert error["code"] in ("upstream_bad_response", "upstream_unsafe_image_url"), error
            assert (await audit_record(server, answer))["outcome"] == "error"
        assert canary.hits == 0, "imagegate connected to a private address named by the upstream"


async def test_webhook_urls_cannot_reach_the_private_network(gateway: Any) -> None:
    server, base, fake = gateway
    root = base.removesuffix("/v1")
    async with Canary() as canary:
        for webhook in (f"http://127.0.0.1:{canary.port}/hook", "http://169.254.169.254/", "file:///etc/passwd", "http://[::1]/"):
            bfl = await call("POST", f"{root}/bfl/v1/flux-dev", json={"prompt": "a cat", "webhook_url": webhook}, headers={"x-key": TENANT_KEY})
            assert bfl.status == 422 and "detail" in bfl.json(), bfl.body
            body = {"version": "owner/model", "input": {"prompt": "a cat"}, "webhook": webhook}
            replicate = await call("POST", f"{root}/replicate/v1/predictions", json=body, headers=AUTH)
            assert replicate.status == 422 and replicate.json()["status"] == 422, replicate.body
            for answer in (bfl, replicate):
                assert (await audit_record(server, answer))["error"]["code"] == "unsafe_url"
    assert canary.hits == 0 and fake.received == []


# -- missing or wrong API key --------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    header: str  # where this surface's SDK puts the key
    audited: bool = True
    body: Any = None


ROUTES = [
    Route("POST", "/v1/images/generations", "bearer", body={"prompt": "a cat"}),
    Route("POST", "/v1/images/edits", "bearer", body="edit"),
    Route("POST", "/v1/provenance/verify", "bearer", body={"urls": ["https://example.com/a.png"]}),
    Route("GET", "/v1/models", "bearer"),  # pass-through
    Route("GET", "/v1/audit/records", "bearer", audited=False),
    Route("GET", "/v1/review/items", "bearer", audited=False),
    Route("POST", "/stability/v2beta/stable-image/generate/core", "bearer", body="form"),
    Route("POST", "/bfl/v1/flux-dev", "x-key", body={"prompt": "a cat"}),
    Route("GET", "/bfl/v1/get_result?id=123", "x-key", audited=False),
    Route("POST", "/replicate/v1/predictions", "bearer", body={"version": "a/b", "input": {"prompt": "a cat"}}),
    Route("GET", "/replicate/v1/predictions/123", "bearer", audited=False),
    Route("GET", "/replicate/v1/webhooks/default/secret", "bearer", audited=False),
]


def credential_headers(route: Route, credential: str | None) -> dict[str, str]:
    if credential is None:
        return {}
    if route.header == "x-key":
        return {"x-key": credential.removeprefix("Bearer ")}
    return {"Authorization": credential}


def request_body(route: Route) -> dict[str, Any]:
    if route.body == "edit":
        return {"data": edit_form(make_image())}
    if route.body == "form":
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("prompt", "a cat")
        return {"data": form}
    return {"json": route.body} if route.body is not None else {}


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
@pytest.mark.parametrize(
    "credential",
    [None, "Bearer ", "Bearer sk-wrong-key", f"Basic {base64.b64encode(TENANT_KEY.encode()).decode()}", f"Bearer {TENANT_KEY}x", f"Bearer {digest(TENANT_KEY)}"],
    ids=["missing", "empty", "wrong", "basic-scheme", "extended", "the-stored-digest"],
)
async def test_missing_or_wrong_key_is_refused_everywhere(gateway: Any, route: Route, credential: str | None) -> None:
    server, base, fake = gateway
    answer = await call(route.method, base.removesuffix("/v1") + route.path, headers=credential_headers(route, credential), **request_body(route))
    assert answer.status in (401, 403), answer.body[:300]
    assert_clean(answer)
    body = answer.json()
    if route.path.startswith("/v1/"):
        assert body["error"]["code"] in ("missing_api_key", "invalid_api_key"), body
    else:
        assert body.get("errors") or body.get("detail"), body  # Stability, BFL, Replicate shapes
    if route.audited:
        record = await audit_record(server, answer)
        assert record["tenant"] is None and record["outcome"] == "rejected"
    assert fake.received == []


async def test_tenant_key_is_not_an_admin_key(gateway: Any) -> None:
    _, base, _ = gateway
    for path in ("/audit/records", "/review/items", "/audit/records/aud_x", "/review/items/rev_x"):
        answer = await call("GET", base + path, headers=AUTH)
        assert_openai_error(answer, 403, "permission_denied")


# -- one tenant reading another's records, review items, assets and jobs ----------------------------------


class FlagEverything(BaseStage):
    """Stands where the output classifier goes: flags every image, so each one is held for review."""

    name = "output_classifier"

    async def on_response(self, exchange: Exchange) -> None:
        if exchange.result is None:
            return
        for index, image in enumerate(exchange.result.images):
            image.verdict = {"action": "flag", "category": "violence", "score": 0.6}
            exchange.decide(Decision(stage=self.name, action=Action.FLAG, category="violence", score=0.6, reason="test", image_index=index))


def flagging(settings: Settings, deps: StageDeps) -> Sequence[Stage]:
    return [FlagEverything() if stage.name == "output_classifier" else stage for stage in default_stages(settings, deps)]


async def test_a_tenant_cannot_read_another_tenants_records_review_items_or_assets(tmp_path: Path, fake_openai: Any, start_gateway: Any, upstream_key: str) -> None:
    _, upstream_url = fake_openai
    tenants = {"globex": {"api_key_sha256": [digest(OTHER_TENANT_KEY)], "admin_key_sha256": [digest(OTHER_ADMIN_KEY)], "audit_prompts": "hash"}}
    server, base = await start_gateway(make_settings(tmp_path, upstream_url, tenants=tenants), stages=flagging)
    acme = await call("POST", f"{base}/images/generations", json={"prompt": "acme's confidential launch", "response_format": "url"}, headers=AUTH)
    assert acme.status == 200
    acme_id = acme.headers["X-Imagegate-Audit-Id"]
    items = (await call("GET", f"{base}/review/items", headers={"Authorization": f"Bearer {ADMIN_KEY}"})).json()["data"]
    assert len(items) == 1
    item = items[0]["id"]
    globex = {"Authorization": f"Bearer {OTHER_ADMIN_KEY}"}

    listing = await call("GET", f"{base}/audit/records", headers=globex)
    assert listing.status == 200 and listing.json()["data"] == []
    assert b"confidential" not in listing.body and acme_id.encode() not in listing.body
    assert_openai_error(await call("GET", f"{base}/audit/records?tenant=acme", headers=globex), 403, "permission_denied")
    for path in (f"/audit/records/{acme_id}", f"/audit/records/{acme_id}/images/0", f"/review/items/{item}", f"/review/items/{item}/image"):
        answer = await call("GET", base + path, headers=globex)
        assert_openai_error(answer, 404, "not_found")
        assert b"confidential" not in answer.body
    assert (await call("GET", f"{base}/review/items?status=all", headers=globex)).json()["data"] == []
    decided = await call("POST", f"{base}/review/items/{item}", json={"decision": "approve"}, headers=globex)
    assert_openai_error(decided, 404, "not_found")
    still = await call("GET", f"{base}/review/items/{item}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert still.json()["status"] == "pending"

    # Assets: a URL is a capability for one asset until it expires; globex cannot turn its own
    # signed URL into acme's asset.
    own = await call("POST", f"{base}/images/generations", json={"prompt": "globex", "response_format": "url"}, headers={"Authorization": f"Bearer {OTHER_TENANT_KEY}"})
    globex_url = URL(own.json()["data"][0]["url"])
    acme_name = URL(acme.json()["data"][0]["url"]).name
    answer = await call("GET", str(globex_url.with_name(acme_name)))
    assert_openai_error(answer, 403, "invalid_signature")


async def test_a_tenant_cannot_poll_another_tenants_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBFL(pending_polls=0)
    monkeypatch.setenv("IMAGEGATE_TEST_PROVIDER_KEY", fake.key)
    upstream, upstream_url = await serve(fake.app())
    fake.base_url = upstream_url
    settings = provider_settings(tmp_path, "bfl", "bfl", upstream_url, ["flux-dev"])
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        submitted = await call("POST", str(server.make_url("/bfl/v1/flux-dev")), json={"prompt": "acme's secret product"}, headers={"x-key": TENANT_KEY})
        assert submitted.status == 200, submitted.body
        polling_url = submitted.json()["polling_url"]
        await server.app[GATEWAY].jobs.drain()
        own = await call("GET", polling_url, headers={"x-key": TENANT_KEY})
        assert own.json()["status"] == "Ready"
        other = await call("GET", polling_url, headers={"x-key": OTHER_TENANT_KEY})
    finally:
        await server.close()
        await upstream.close()
    assert other.status == 404 and "detail" in other.json()
    assert b"secret product" not in other.body and b"/v1/assets/" not in other.body


async def test_assets_are_served_so_that_browsers_never_sniff_them(gateway: Any) -> None:
    _, base, _ = gateway
    linked = await call("POST", f"{base}/images/generations", json={"prompt": "a cat", "response_format": "url"}, headers=AUTH)
    served = await call("GET", linked.json()["data"][0]["url"])
    assert served.status == 200 and served.headers["Content-Type"] == "image/png"
    assert served.headers.get("X-Content-Type-Options") == "nosniff"
