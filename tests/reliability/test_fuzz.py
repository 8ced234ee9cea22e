"""Property tests against the running gateway: whatever a client sends, it gets a 200 or a 4xx in
the provider's error shape, never a 5xx, never a stack trace.

Hypothesis drives the two bodies imagegate parses itself (the JSON of `/v1/images/generations` and
the multipart form of `/v1/images/edits`), from well-formed requests with hostile values to bytes
that are not JSON or multipart at all. schemathesis then generates requests for every operation of
imagegate's own OpenAPI description (`/openapi.json`), positive and negative, and checks the answers
against the description. Runs are deterministic (derandomised, no example database) and small.

The gateway runs in a thread (`tests.reliability.live`) with the fake OpenAI upstream behind it;
every URL a fuzzed request names is refused without a connection or a DNS query.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.openapi import ErrorResponse, ImagesResponse
from tests.conftest import ADMIN_KEY, TENANT_KEY, make_settings
from tests.fakes.openai_upstream import make_image
from tests.reliability.live import LiveGateway, live_gateway, without_demo

HEADERS = {"Authorization": f"Bearer {TENANT_KEY}", "x-key": TENANT_KEY, "x-goog-api-key": TENANT_KEY}
FUZZ = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEGATE_TEST_UPSTREAM_KEY", "sk-upstream-fuzz-key")
        with live_gateway(lambda url: without_demo(make_settings(folder, url))) as gateway:
            yield gateway


def assert_clean_answer(response: requests.Response) -> None:
    """200 with OpenAI's ImagesResponse, or a 4xx with OpenAI's error object; nothing else."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    assert "Traceback" not in response.text and "File \"/" not in response.text
    if response.status_code == 200:
        ImagesResponse.model_validate_json(response.content)
        return
    assert 400 <= response.status_code < 500
    error = ErrorResponse.model_validate_json(response.content).error
    assert error.message and error.type and error.code


# -- Hypothesis: the JSON generation body -----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
known_fields = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.text(max_size=60) | json_values,
        "model": st.sampled_from(["gpt-image-1", "dall-e-3", "no-such-model", ""]) | json_values,
        "n": st.integers(-3, 14) | json_values,
        "size": st.sampled_from(["auto", "1024x1024", "10x10", "99999x99999", "big"]) | json_values,
        "quality": st.text(max_size=40) | json_values,
        "response_format": st.sampled_from(["b64_json", "url", "gif"]) | json_values,
        "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]) | json_values,
        "user": st.text(max_size=300) | json_values,
        "background": json_values,
    },
)
nested = st.integers(1, 3000).map(lambda depth: '{"prompt": "x", "deep": ' + "[" * depth + "]" * depth + "}")
generation_bodies = (
    known_fields.map(lambda fields: json.dumps(fields).encode())
    | json_values.map(lambda value: json.dumps(value).encode())
    | nested.map(str.encode)
    | st.binary(max_size=300)
)


@FUZZ
@given(body=generation_bodies, content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_any_generation_body_gets_a_clean_answer(live: LiveGateway, body: bytes, content_type: str) -> None:
    response = requests.post(
        f"{live.root}/v1/images/generations", data=body, headers={**HEADERS, "Content-Type": content_type}, timeout=30
    )
    assert_clean_answer(response)


# -- Hypothesis: the multipart edit body ---------------------------------------------------------------

part_names = st.sampled_from(["prompt", "model", "n", "size", "image", "image[]", "image[0]", "mask", "user", ""]) | st.text(max_size=12)
part_values = st.sampled_from([make_image(), make_image(fmt="jpeg"), b"<svg onload=alert(1)>", b"", b"gpt-image-1", b"3"]) | st.binary(max_size=200)
filenames = st.none() | st.text(max_size=30)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A multipart body built by hand (so it may be hostile: odd names, filenames, boundaries)."""
    boundary = draw(st.sampled_from(["b0undary", "x" * 70, uuid.uuid4().hex]))
    chunks = []
    for name, value, filename in draw(st.lists(st.tuples(part_names, part_values, filenames), max_size=8)):
        disposition = f'form-data; name="{name}"' + (f"; filename*=utf-8''{requests.utils.quote(filename)}" if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    ending = draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b"", b"--" + boundary.encode()]))
    declared = draw(st.sampled_from([boundary, "other", ""]))
    return b"".join(chunks) + ending, f"multipart/form-data; boundary={declared}" if declared else "multipart/form-data"


@FUZZ
@given(form=multipart_bodies())
def test_any_edit_body_gets_a_clean_answer(live: LiveGateway, form: tuple[bytes, str]) -> None:
    body, content_type = form
    response = requests.post(f"{live.root}/v1/images/edits", data=body, headers={**HEADERS, "Content-Type": content_type}, timeout=30)
    assert_clean_answer(response)


# -- schemathesis: every operation of /openapi.json ------------------------------------------------------

POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Invalid input must be refused (4xx); where it answers is checked too, never a 5xx.
NEGATIVE_CHECKS = [not_a_server_error, negative_data_rejection]


def checks_for(checks: list[Any], path: str, media_type: str | None) -> list[Any]:
    """A verify upload reports on every part it gets, unreadable ones included (by design: ad-ops
    learn which file of a batch is broken; tests/reliability/test_hostile.py), so a part that breaks
    the description is answered 200 with `"state": "unreadable"`, not refused: only "never a 5xx"
    applies to those bodies."""
    if path == "/v1/provenance/verify" and media_type == "multipart/form-data":
        return [check for check in checks if check is not negative_data_rejection]
    return checks


def spans_segments(spec: dict[str, Any], path: str) -> bool:
    """Whether a path parameter may hold '/' (fal's `{app}` is `owner/name`): OpenAPI path parameters
    cannot, so no client, schemathesis included, can build such a URL from the description."""
    return any(
        parameter.get("in") == "path" and "/" in parameter.get("schema", {}).get("pattern", "")
        for item in [spec["paths"][path]]
        for operation in item.values()
        for parameter in operation.get("parameters", [])
    )


def operations(root: str, mode: GenerationMode) -> list[Any]:
    spec = requests.get(f"{root}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec)
    chosen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if spans_segments(spec, operation.path):
            continue
        if mode is GenerationMode.NEGATIVE and not operation.definition.raw.get("parameters") and "requestBody" not in operation.definition.raw:
            continue  # nothing to make invalid (/healthz, /metrics...)
        chosen.append(operation)
    return chosen


def headers_for(path: str) -> dict[str, str]:
    admin = path.startswith(("/v1/audit/", "/v1/review/"))
    return {**HEADERS, "Authorization": f"Bearer {ADMIN_KEY}"} if admin else HEADERS


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_schemathesis_every_operation(live: LiveGateway, mode: GenerationMode) -> None:
    checks = POSITIVE_CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS
    failures: list[str] = []
    chosen = operations(live.root, mode)
    assert len(chosen) >= 25, "the description lost its operations"
    for operation in chosen:
        headers = headers_for(operation.path)

        @settings(max_examples=15, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=live.root, headers=headers, timeout=30)
            case.validate_response(response, checks=checks_for(checks, operation.path, case.media_type))
            assert "Traceback" not in response.text

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
