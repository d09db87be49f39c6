"""The handshake of one session (PROTOCOL.md §4.1), driving :class:`relay.protocol.handshake.ServerHandshake`.

``hello`` → ``challenge`` → ``auth`` → device lookup → join the bus → read heads and who is online →
``welcome``. The caller runs it under the handshake deadline; every refusal raises the error that
closes the session (``exc.close_code_for(in_handshake=True)``). The session joins live delivery and
presence *before* the welcome's heads and online devices are read, so nothing committed in between is
missed: what arrives meanwhile is held and sent right after the welcome.
"""

from __future__ import annotations

import attrs

from relay.errors import ProtocolError
from relay.gateway.fitting import fit_heads, frame_bytes
from relay.gateway.session import Session
from relay.protocol import handshake as hs
from relay.protocol.codec import encode_server, structure_client
from relay.protocol.messages import Auth, ClientMessage, Hello, JsonValue
from relay.store import base as store

__all__ = ["WELCOME_STREAMS", "run_handshake"]

#: At most this many of the most recently written streams are listed in ``welcome`` (§4.1).
WELCOME_STREAMS = 1000


def _expect(obj: dict[str, JsonValue], kind: str) -> ClientMessage:
    """The message ``obj`` holds, if it is a ``kind``; any other message before welcome is out of order.

    A malformed message of the expected type is ``bad_request`` (1002 during the handshake); a message
    of any other type, a known one, an unknown one or none, is ``protocol_error`` (1002).
    """
    if obj.get("type") != kind:
        raise ProtocolError(detail=f"expected {kind}")
    return structure_client(obj)


def _lookup(found: store.DeviceLookup) -> hs.DeviceLookup:
    """The store's answer about a device, as the handshake machine takes it."""
    if isinstance(found, store.DeviceRecord):
        return hs.DeviceRecord(
            user_id=found.user_id, public_key=found.public_key, name=found.name, revoked=found.revoked
        )
    if isinstance(found, store.DeletedDevice):
        return hs.DeletedAccount()
    return hs.UnknownDevice()


async def run_handshake(session: Session) -> None:
    """Authenticate the peer, join the bus and queue ``welcome``; raises the error that closes."""
    ctx = session.ctx
    machine = hs.ServerHandshake(ctx.server_key)

    hello = _expect(await session.receive_object(), Hello.TYPE)
    challenge = machine.receive_hello(hello, now_ms=ctx.clock.now_ms())
    await session.answer(encode_server(challenge))

    auth = _expect(await session.receive_object(), Auth.TYPE)
    device_id = machine.receive_auth(auth)
    found = await ctx.store.lookup_device(device_id)
    session.identity = machine.complete(_lookup(found))

    # Join live delivery and presence first, then read: nothing committed in between is missed.
    session.subscribed = True  # set first: leaving is idempotent, and a cancelled join must be undone
    await ctx.bus.subscribe(session, at=ctx.clock.now_ms())
    user_id = session.identity.user_id
    now = ctx.clock.now_ms()
    streams, truncated = await ctx.store.recent_streams(
        user_id, limit=WELCOME_STREAMS, now_ms=now, clock_skew_ms=ctx.settings.clock_skew_ms
    )
    online = await ctx.bus.online_devices(user_id)

    welcome = machine.welcome(
        server_time=ctx.clock.now_ms(),
        heartbeat_ms=ctx.settings.heartbeat_ms,
        limits=ctx.limits,
        streams={},
        streams_truncated=False,
        online=online,
    )
    # Heads of long names can outgrow a frame before 1,000 streams: then the least recent are left out.
    budget = ctx.settings.max_frame_bytes - frame_bytes(encode_server(welcome))
    fitted, cut = fit_heads(streams.items(), budget)
    welcome = attrs.evolve(welcome, streams=fitted, streams_truncated=truncated or cut)
    await session.go_live(encode_server(welcome), fitted)
