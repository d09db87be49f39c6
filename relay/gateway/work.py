"""The work of one session, in order: the handshake under its deadline, then the session's tasks.

Passed to :meth:`relay.gateway.session.Session.run`, which runs it inside the work scope and turns
whatever ends it into the session's close (see the diagram in :mod:`relay.gateway.session`).
"""

from __future__ import annotations

import trio

from relay.errors import HandshakeTimeout
from relay.gateway.handshake import run_handshake
from relay.gateway.pager import Pager
from relay.gateway.publisher import PublishItem, run_publisher
from relay.gateway.reader import run_reader
from relay.gateway.session import Session
from relay.gateway.traces import handshake_span
from relay.gateway.watchdog import watch_heartbeat

__all__ = ["run_work"]


async def run_work(session: Session) -> None:
    """Authenticate within ``handshake_timeout_ms`` of the upgrade, then serve until the session ends."""
    settings = session.ctx.settings
    with handshake_span(session):
        with trio.move_on_at(session.opened_at + settings.handshake_timeout_ms / 1000) as deadline:
            await run_handshake(session)
        if deadline.cancelled_caught:
            raise HandshakeTimeout()

    publish_send, publish_receive = trio.open_memory_channel[PublishItem](settings.max_inflight)
    slots = trio.Semaphore(settings.max_inflight)
    pager = Pager(session)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_publisher, session, publish_receive, slots)
        nursery.start_soon(_read, session, publish_send, slots, pager)
        nursery.start_soon(_page, session, pager)
        nursery.start_soon(_watch, session)


async def _read(
    session: Session, publish_send: trio.MemorySendChannel[PublishItem], slots: trio.Semaphore, pager: Pager
) -> None:
    # Closing the channel when reading stops lets the publisher finish what was read, then end.
    with publish_send, session.reader_scope:
        await run_reader(session, publish_send, slots, pager)


async def _page(session: Session, pager: Pager) -> None:
    with session.pager_scope:
        await pager.run()


async def _watch(session: Session) -> None:
    with session.watchdog_scope:
        await watch_heartbeat(session, heartbeat_ms=session.ctx.settings.heartbeat_ms)
