"""Optional OpenTelemetry traces: one server span per exchange, a child span per stage hook, and the
trace context carried to the providers (W3C `traceparent`), exported over OTLP/HTTP.

Off by default, and then free: no OpenTelemetry import, no span objects, nothing on the hot path.
With `tracing.enabled: true` (and the `tracing` extra installed) each image request gets a SERVER
span `imagegate <operation>`, continuing the caller's trace when it sends `traceparent`, with the
route, provider, model, outcome, status, audit id and request id as attributes (never a prompt, an
end user or a key). Each stage hook is a child span; the upstream calls (and pass-through) are
CLIENT spans from the aiohttp client instrumentation, which also sends `traceparent` upstream.

The tracer provider belongs to the app (not the process-global one), so two gateways in one
process, or tests, never share exporters. Spans are batched and exported off the request path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .settings import ConfigError, TracingSettings


class Tracing:
    """The app's tracer; `span(...)` is a context manager yielding the span (or None when off)."""

    def __init__(self, provider: Any, tracer: Any, client_trace_config: Any) -> None:
        self.provider = provider
        self.tracer = tracer
        self.client_trace_configs = [client_trace_config]

    @contextmanager
    def server_span(self, name: str, headers: Mapping[str, str], attributes: dict[str, Any]) -> Iterator[Any]:
        from opentelemetry import propagate, trace

        context = propagate.extract(headers)
        with self.tracer.start_as_current_span(name, context=context, kind=trace.SpanKind.SERVER, attributes=attributes) as span:
            yield span

    @staticmethod
    def in_trace() -> bool:
        """Whether a sampled exchange span is current (stages of job polls outside one get none)."""
        from opentelemetry import trace

        return bool(trace.get_current_span().is_recording())

    @contextmanager
    def stage_span(self, name: str) -> Iterator[Any]:
        with self.tracer.start_as_current_span(name) as span:
            yield span

    def shutdown(self) -> None:
        """Flush what is batched and stop the exporter (at app shutdown)."""
        self.provider.shutdown()


def setup_tracing(settings: TracingSettings, exporter: Any = None) -> Tracing | None:
    """The app's `Tracing`, or None when tracing is off. `exporter` replaces the configured one (tests)."""
    if not settings.enabled:
        return None
    try:
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError(
            f"tracing.enabled needs the OpenTelemetry packages: pip install 'imagegate[tracing]' ({exc.name} is missing)"
        ) from None
    if exporter is None:
        if settings.exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else OTLPSpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("imagegate")
    return Tracing(provider, tracer, create_trace_config(tracer_provider=provider))
