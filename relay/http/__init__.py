"""The HTTP API of PROTOCOL.md §6, as Quart blueprints, and its error edge (:mod:`relay.http.errors`).

- :mod:`~relay.http.server`: ``GET /v1/server``, ``/healthz``, plain HTTP on ``/v1/ws``;
- :mod:`~relay.http.enroll`: ``POST /v1/enroll`` (§2);
- :mod:`~relay.http.auth`: signed requests (§3), the :func:`~relay.http.auth.signed` decorator;
- :mod:`~relay.http.pairings`, :mod:`~relay.http.devices`, :mod:`~relay.http.user`: the signed
  endpoints (§2, §5, §6); :mod:`~relay.http.bodies` their body rules, :mod:`~relay.http.notices` their
  bounded bus calls;
- :mod:`~relay.http.cors`: ``RELAY_CORS_ORIGINS``; :mod:`~relay.http.runtime`: what handlers share;
- :mod:`~relay.http.openapi`: ``GET /openapi.json``, the OpenAPI 3.1 document of all of the above
  (``docs/openapi.json``).
"""
