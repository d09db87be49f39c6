"""The reader of one session: every frame after ``welcome`` (PROTOCOL.md §4, §4.6).

Before each frame it takes an in-flight slot, so that while ``max_inflight`` publishes are unanswered it
stops reading. Per frame: a binary frame, an oversized one or one that is not an I-JSON object closes
the session (:meth:`Session.receive_object`); a ``publish`` goes to the publisher with its slot, to be
answered in order; anything else is answered here or submitted to the pager, and its slot comes back
at once. A refused request (wrong types, an unknown type, ``busy``) is answered with an ``error`` and
the session stays open; ``hello`` or ``auth`` after the handshake is ``protocol_error`` (1002).
"""

from __future__ import annotations

import trio

from relay.errors import ProtocolError, RequestError
from relay.gateway.pager import ListJob, NextJob, Pager, ReplayJob
from relay.gateway.publisher import PublishItem
from relay.gateway.session import Session
from relay.protocol.codec import AnswerContext, answer_context, encode_server, structure_client
from relay.protocol.messages import (
    Auth,
    ClientMessage,
    Hello,
    JsonValue,
    Ping,
    Pong,
    Publish,
    Replay,
    ReplayNext,
    Streams,
)
from relay.protocol.validation import check_stream_name, check_streams, clamp_replay

__all__ = ["run_reader"]


async def run_reader(
    session: Session,
    publishes: trio.MemorySendChannel[PublishItem],
    slots: trio.Semaphore,
    pager: Pager,
) -> None:
    """Read and dispatch frames until cancelled or the session ends; raises the error that closes."""
    while True:
        if slots.value == 0:
            session.reading_paused = True  # back-pressure: silence is ours, not the client's
        await slots.acquire()
        if session.reading_paused:
            session.reading_paused = False
            session.last_heard = trio.current_time()
        obj = await session.receive_object()
        if obj.get("type") == Publish.TYPE:
            # Room for every slot; the slot goes with it. last_heard: when this frame was read.
            publishes.send_nowait(PublishItem(obj, session.last_heard))
            continue
        slots.release()
        await _dispatch(session, obj, pager)


async def _dispatch(session: Session, obj: dict[str, JsonValue], pager: Pager) -> None:
    ctx = answer_context(obj)
    try:
        msg = structure_client(obj)
        await _handle(session, msg, ctx, pager)
    except RequestError as exc:
        await session.answer_error(exc, ctx)


async def _handle(session: Session, msg: ClientMessage, ctx: AnswerContext, pager: Pager) -> None:
    limits = session.ctx.limits
    match msg:
        case Ping():
            await session.answer(encode_server(Pong(server_time=session.ctx.clock.now_ms(), ref=msg.ref)))
        case Replay():
            stream = check_stream_name(msg.stream)
            after, limit = clamp_replay(msg, limits)
            pager.submit(ReplayJob(stream=stream, after=after, limit=limit, ctx=ctx))
        case ReplayNext():
            pager.submit(NextJob(token=msg.token, ctx=ctx))
        case Streams():
            after_name, count = check_streams(msg)
            pager.submit(ListJob(after=after_name, limit=count, ctx=ctx))
        case Hello() | Auth():
            raise ProtocolError(detail=f"{msg.TYPE} after the handshake")
        case Publish():  # pragma: no cover - the reader hands publishes to the publisher
            raise AssertionError("publish reached the dispatcher")
