"""Helpers for the HTTP tests: a started app on a MemoryStore, driven through Quart's test client.

:func:`open_relay` must run under a ``MockClock`` (see ``conftest.py``): the app's clock is a
:class:`relay.clock.TrioClock`, so its wall time moves with trio's virtual time.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from quart.typing import TestClientProtocol
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from relay import crypto
from relay.app import create_app
from relay.bus.base import Bus
from relay.clock import TrioClock
from relay.config import Settings
from relay.store.memory import MemoryStore

#: Virtual start time of every test: 2025-11-24T16:00:00Z.
T0_MS = 1_764_000_000_000
#: Real-time cap of one request; virtual time jumps, so this only catches a hang.
CAP_S = 10


@attrs.define(eq=False)
class Answer:
    status: int
    headers: Headers
    body: Any


@attrs.define(eq=False)
class Relay:
    """One started app, its store and clock, and helpers to drive it like a client."""

    app: QuartTrio
    client: TestClientProtocol
    store: MemoryStore
    clock: TrioClock
    settings: Settings

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        kwargs: dict[str, Any] = {"method": method, "headers": dict(headers or {})}
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        with trio.fail_after(CAP_S):
            response = await self.client.open(path, **kwargs)
            raw = await response.get_data()
        body = None
        if response.mimetype == "application/json":
            body = jsonlib.loads(raw)
        return Answer(response.status_code, response.headers, body)

    async def new_token(self, **kwargs: Any) -> tuple[str, str]:
        """A new user and its first token (user id, b64 token)."""
        new = await self.store.create_user(
            now_ms=self.clock.now_ms(), token_ttl_ms=self.settings.token_ttl_s * 1000, **kwargs
        )
        return new.user_id, new.token.token

    async def enroll(self, body: Mapping[str, object], **kwargs: Any) -> Answer:
        return await self.request("POST", "/v1/enroll", json=body, **kwargs)


def enroll_body(token: str, key: crypto.SigningKey, name: str = "Alice's phone") -> dict[str, str]:
    """A well-formed, correctly signed enrolment body."""
    public_key = key.public_key_b64
    return {
        "token": token,
        "public_key": public_key,
        "name": name,
        "sig": key.sign(crypto.enroll_string(token, public_key, name)),
    }


@asynccontextmanager
async def open_relay(
    settings: Settings, store: MemoryStore | None = None, bus: Bus | None = None
) -> AsyncIterator[Relay]:
    """The app for ``settings``, started; its clock reads :data:`T0_MS` now. Call inside trio."""
    clock = TrioClock.starting_at(T0_MS)
    store = store if store is not None else MemoryStore()
    app = create_app(settings, store=store, clock=clock, bus=bus)
    async with app.test_app() as test_app:
        yield Relay(app=app, client=test_app.test_client(), store=store, clock=clock, settings=settings)
