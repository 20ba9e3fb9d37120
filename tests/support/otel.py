"""OpenTelemetry for tests: finished spans kept in memory (needs the otel extra)."""

from __future__ import annotations

from typing import Any


def memory_spans() -> Any:
    """Make a fresh in-memory span exporter the global tracer provider's; returns it.

    OpenTelemetry lets a process set its provider once; the tests reset that
    guard so that each one sees only its own spans.
    """
    # An optional extra: imported only when a test asks for spans.
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER_SET_ONCE._done = False  # type: ignore[attr-defined]
    trace.set_tracer_provider(provider)
    return exporter
