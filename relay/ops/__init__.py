"""Operations: rate limits, circuit breakers, metrics, structured logs and tracing.

- :mod:`~relay.ops.ratelimit`: token buckets in this process; :mod:`~relay.ops.ratelimit_redis`: the same
  limits shared by every node through Redis;
- :mod:`~relay.ops.breaker`: circuit breakers around the store and the bus;
- :mod:`~relay.ops.metrics`: the Prometheus metrics (documented in ``docs/operations.md``);
- :mod:`~relay.ops.logs`: one JSON object per log line, with request/session/device ids, secrets redacted;
- :mod:`~relay.ops.tracing`: OpenTelemetry, configured by ``OTEL_*`` and off by default.
"""
