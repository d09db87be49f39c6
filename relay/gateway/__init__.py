"""The trio side of a WebSocket session (PROTOCOL.md §4; ARCHITECTURE.md "A session, as tasks").

:class:`Gateway` serves ``/v1/ws`` at the ASGI level. Modules, one job each:

- :mod:`~relay.gateway.gateway`: the gateway (ASGI entry, ``heads`` ticker, revocation watcher,
  graceful shutdown);
- :mod:`~relay.gateway.asgi`: the raw ASGI WebSocket protocol and the ``/v1/ws`` router;
- :mod:`~relay.gateway.session`: one session: its nursery, delivery, and how it closes;
- :mod:`~relay.gateway.work`: what a session runs: the handshake, then its tasks;
- :mod:`~relay.gateway.handshake`, :mod:`~relay.gateway.reader`, :mod:`~relay.gateway.publisher`,
  :mod:`~relay.gateway.pager`, :mod:`~relay.gateway.watchdog`: those tasks;
- :mod:`~relay.gateway.inbound`: incoming frames, checked before they are parsed;
- :mod:`~relay.gateway.outbox`: the bounded outgoing queue and the writer;
- :mod:`~relay.gateway.revocations`: the node's revocation watcher (the store's revocation log);
- :mod:`~relay.gateway.revocation_index`: live sessions by revocation subject, and the handshake race;
- :mod:`~relay.gateway.fitting`: keeping frames within ``max_frame_bytes``;
- :mod:`~relay.gateway.context`: the dependencies sessions share, and the admission seam;
- :mod:`~relay.gateway.admission`: the publish rate limit per device and the handshake limit per address;
- :mod:`~relay.gateway.instruments`: the gateway's metrics, bound once;
- :mod:`~relay.gateway.traces`: the gateway's spans.
"""

from __future__ import annotations

from relay.gateway.admission import HANDSHAKE_BURST, HANDSHAKE_RATE_PER_S, PublishLimits
from relay.gateway.context import Admission, AdmitAll
from relay.gateway.gateway import Gateway

__all__ = ["HANDSHAKE_BURST", "HANDSHAKE_RATE_PER_S", "Admission", "AdmitAll", "Gateway", "PublishLimits"]
