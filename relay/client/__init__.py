"""The reference client: a small trio library for device authors, and ``relay device`` on top of it.

- :mod:`~relay.client.credentials`: a device's credentials and the 0600 file that keeps them;
- :mod:`~relay.client.http`: ``GET /v1/server``, enrolment, pairing URIs, signed requests (§2, §3);
- :mod:`~relay.client.connection`: one WebSocket session: handshake with server-key pinning, requests
  and their answers, live frames, heartbeats (§4);
- :mod:`~relay.client.client`: the reconnecting client: publish with retry by id, every event of the
  user in order, gap detection that triggers replay;
- :mod:`~relay.client.ordering`: the pure merge of live delivery and replay;
- :mod:`~relay.client.cli`: ``relay device enroll|publish|tail``.
"""

from __future__ import annotations

from relay.client.client import Backoff, Delivery, RelayClient, open_client
from relay.client.connection import Connection, connect, new_event_id
from relay.client.credentials import CredentialsError, DeviceCredentials
from relay.client.errors import ClientError, ConnectionLost
from relay.client.http import PairingUri, RelayHttp, SignedAuth, parse_pairing_uri

__all__ = [
    "Backoff",
    "ClientError",
    "Connection",
    "ConnectionLost",
    "CredentialsError",
    "Delivery",
    "DeviceCredentials",
    "PairingUri",
    "RelayClient",
    "RelayHttp",
    "SignedAuth",
    "connect",
    "new_event_id",
    "open_client",
    "parse_pairing_uri",
]
