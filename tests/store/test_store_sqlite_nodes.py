"""A SQLite node that died without forgetting itself (SIGKILL) is recognised at once by its lock file
(relay/store/node_locks.py), so a restarted node is not held "not ready" for the dead one's heartbeat."""

from __future__ import annotations

import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
import trio
from store_helpers import CAP_S

from relay.store.node_locks import NodeLocks
from relay.store.sqlite import SqliteStore

NODE = """
import sys, time, trio
from pathlib import Path
from relay.store.sqlite import SqliteStore

async def main():
    store = await SqliteStore.open(Path(sys.argv[1]))
    await store.heartbeat_node(sys.argv[2], shared_bus=False, now_ms=int(time.time() * 1000), ttl_ms=60_000)
    print("alive", flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


async def test_a_killed_nodes_heartbeat_is_dropped_at_once_while_a_running_ones_stays(tmp_path: Path) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        await store.migrate()
        node = str(uuid.uuid4())
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", NODE, str(tmp_path), node], stdout=-1
        )
        try:
            assert process.stdout is not None
            assert (await process.stdout.receive_some(100)).startswith(b"alive")
            now = int(time.time() * 1000)
            running = await store.live_nodes(now_ms=now)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            after = await store.live_nodes(now_ms=now)
            again = await store.live_nodes(now_ms=0)  # the row itself is gone, not only hidden
        finally:
            if process.returncode is None:
                process.kill()
            await store.close()
    assert [n.node_id for n in running] == [node]  # its lock is held: it runs
    assert after == []
    assert again == []
    assert not (tmp_path / "nodes" / f"{node}.lock").exists()


async def test_this_process_nodes_are_never_taken_for_gone_and_forgetting_removes_the_file(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        await store.migrate()
        node = str(uuid.uuid4())
        await store.heartbeat_node(node, shared_bus=False, now_ms=1_000, ttl_ms=60_000)
        live = await store.live_nodes(now_ms=1_000)
        held_file = (tmp_path / "nodes" / f"{node}.lock").exists()
        await store.forget_node(node)
        await store.close()
    assert [n.node_id for n in live] == [node]
    assert held_file
    assert not (tmp_path / "nodes" / f"{node}.lock").exists()


def test_a_lock_held_elsewhere_is_not_gone_and_unknown_or_malformed_ids_are_never_gone(
    tmp_path: Path,
) -> None:
    node = str(uuid.uuid4())
    holder, checker = NodeLocks(tmp_path), NodeLocks(tmp_path)
    holder.hold(node)
    try:
        assert not checker.gone(node)  # another open file description holds it
        assert not checker.gone(str(uuid.uuid4()))  # no file: unknown, not gone
        assert not checker.gone("../../etc/passwd")  # never a path outside the lock directory
    finally:
        holder.release_all()
    assert not checker.gone(node)  # released and removed: unknown again


async def test_without_a_lock_file_the_heartbeat_still_counts_and_the_trouble_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "nodes").write_text("not a directory")  # so no lock file can be made
    with trio.fail_after(CAP_S):
        store = await SqliteStore.open(tmp_path)
        await store.migrate()
        node = str(uuid.uuid4())
        for beat in range(3):
            await store.heartbeat_node(node, shared_bus=False, now_ms=1_000 + beat, ttl_ms=60_000)
        live = await store.live_nodes(now_ms=1_000)
        await store.close()
    assert [n.node_id for n in live] == [node]  # it expires by itself, as before
    assert len([r for r in caplog.records if "cannot lock" in r.getMessage()]) == 1
