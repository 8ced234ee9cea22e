"""OpenTelemetry traces (optional): an exchange is a server span continuing the caller's trace, each
stage hook a child span, and the upstream call a client span that carries `traceparent` upstream.

Real OpenTelemetry SDK with its in-memory exporter; the client is the official `openai` SDK.
"""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra is not installed")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from proxy.app import GATEWAY  # noqa: E402
from proxy.settings import ConfigError, TracingSettings  # noqa: E402
from proxy.stages.factory import full_stages  # noqa: E402
from proxy.tracing import setup_tracing  # noqa: E402
from tests.conftest import TENANT_KEY, make_settings  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
PROMPT = "a lighthouse on a cliff at sunrise"


def sdk(base_url: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=TENANT_KEY, max_retries=0, default_headers=headers)


async def test_exchange_continues_the_callers_trace_with_stage_and_upstream_spans(
    tmp_path: Path, fake_openai, start_gateway, upstream_key: str
) -> None:
    fake, upstream_url = fake_openai
    exporter = InMemorySpanExporter()
    settings = make_settings(tmp_path, upstream_url, tracing={"enabled": True})
    server, base_url = await start_gateway(settings, stages=full_stages, span_exporter=exporter)
    async with sdk(base_url, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01") as client:
        raw = await client.images.with_raw_response.generate(model="gpt-image-1", prompt=PROMPT)
    server.app[GATEWAY].tracing.provider.force_flush()
    spans = exporter.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in spans} == {TRACE_ID}  # one trace: the caller's
    [root] = [span for span in spans if span.kind is SpanKind.SERVER]
    assert root.name == "imagegate generate" and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["imagegate.audit_id"] == raw.headers["X-Imagegate-Audit-Id"]
    assert root.attributes["imagegate.outcome"] == raw.headers["X-Imagegate-Outcome"]
    assert root.attributes["imagegate.model"] == "gpt-image-1" and root.attributes["http.response.status_code"] == 200
    stages = {span.name for span in spans if span.parent is not None and span.parent.span_id == root.context.span_id}
    assert {"stage authenticate.on_request", "stage prompt_filter.on_request", "stage upstream.on_request",
            "stage provenance.on_response"} <= stages  # fmt: skip
    [upstream_stage] = [span for span in spans if span.name == "stage upstream.on_request"]
    [client_span] = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert client_span.parent.span_id == upstream_stage.context.span_id
    # The provider got the trace context of imagegate's client span, never the caller's raw header.
    sent = fake.received[0]["headers"]["traceparent"]
    assert sent.split("-")[1] == TRACE_ID and sent.split("-")[2] == format(client_span.context.span_id, "016x")
    # Traces never carry the prompt, the key or the end user.
    values = [str(value) for span in spans for value in (span.attributes or {}).values()]
    assert not any(PROMPT in value or TENANT_KEY in value for value in values)


async def test_a_failed_exchange_is_an_error_span(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    fake.fault = "server_error"  # the provider fails
    exporter = InMemorySpanExporter()
    settings = make_settings(tmp_path, upstream_url, tracing={"enabled": True})
    server, base_url = await start_gateway(settings, span_exporter=exporter)
    async with sdk(base_url) as client:
        with pytest.raises(openai.APIStatusError):
            await client.images.generate(model="gpt-image-1", prompt=PROMPT)
    server.app[GATEWAY].tracing.provider.force_flush()
    [root] = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["imagegate.error.code"] == "upstream_error"


async def test_tracing_off_sends_no_trace_context(tmp_path: Path, fake_openai, start_gateway, upstream_key: str) -> None:
    fake, upstream_url = fake_openai
    server, base_url = await start_gateway(make_settings(tmp_path, upstream_url))
    async with sdk(base_url) as client:
        await client.images.generate(model="gpt-image-1", prompt=PROMPT)
    assert server.app[GATEWAY].tracing is None and server.app[GATEWAY].pipeline.tracing is None
    assert "traceparent" not in {name.lower() for name in fake.received[0]["headers"]}


def test_enabled_without_the_packages_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"imagegate\[tracing\]"):
        setup_tracing(TracingSettings(enabled=True))
    assert setup_tracing(TracingSettings(enabled=False)) is None
