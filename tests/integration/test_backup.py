"""Backups of a populated SQLite store: backup (online, while the server runs and events arrive) →
restore → verify, the restored server serving the same key and events; and what verify catches."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import attrs
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loopback"))

from loopback_support import CAP_S, running_server

from relay.backup import main as backup_main
from relay.client import connect
from relay.store.sqlite import DATABASE_FILE

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], data_dir: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = backup_main(argv, environ={"RELAY_DATA_DIR": str(data_dir)}, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


async def populate_and_back_up(data_dir: Path, target: Path) -> tuple[str, object, list[int]]:
    """Two users, several streams, a revoked device; a backup taken while one device keeps publishing."""
    async with running_server(data_dir) as server:
        alice, laptop = await server.devices(2)
        (bob,) = await server.devices(1)
        server_key = alice.server_key
        async with connect(alice) as a, connect(bob) as b:
            for n in range(120):
                await a.send_publish(f"notes/{n % 3}", {"n": n, "text": "x" * (n % 50)})
            acks = [(await a.publish("log", n)).seq for n in range(30)]
            await b.publish("bob", {"private": True})
            await server.store.revoke_device(
                laptop.device_id, now_ms=server.app.services.runtime.clock.now_ms()
            )

            await a.publish("busy", "before the backup")

            async def keep_publishing() -> None:
                n = 0
                while True:
                    await a.publish("busy", n)
                    n += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_publishing)
                status, out, err = await trio.to_thread.run_sync(run, ["backup", str(target)], data_dir)
                nursery.cancel_scope.cancel()
        assert status == 0, err
        assert out.startswith("backed up ")
    return server_key, alice, acks


async def test_a_backup_taken_online_restores_and_verifies_and_serves_the_same_data(tmp_path: Path) -> None:
    target = tmp_path / "relay.backup"
    with trio.fail_after(CAP_S * 3):
        server_key, alice, acks = await populate_and_back_up(tmp_path / "data", target)
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o600

        status, out, err = await trio.to_thread.run_sync(run, ["verify", str(target)], tmp_path / "unused")
        assert (status, err) == (0, ""), err
        assert "everything matches" in out

        restored = tmp_path / "restored"
        status, out, err = await trio.to_thread.run_sync(run, ["restore", str(target)], restored)
        assert status == 0, err
        async with running_server(restored) as server:
            moved = attrs.evolve(alice, url=server.url)
            async with connect(moved) as a:  # the same server key: the pinned device still trusts it
                pages = [p async for p in a.replay_to_head("log")]
                streams = await a.all_streams()
    assert moved.server_key == server_key
    assert [e.seq for p in pages for e in p.events] == acks
    assert {"notes/0", "notes/1", "notes/2", "log", "busy"} <= set(streams)
    assert streams["notes/0"] == 40
    with tarfile.open(target) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest["kind"] == "sqlite"
    assert manifest["tables"]["devices"] == 3
    assert manifest["tables"]["events"] >= 151
    assert {s["stream"] for s in manifest["streams"]} >= {"log", "bob"}


async def test_verify_catches_a_backup_whose_data_was_altered(tmp_path: Path) -> None:
    target = tmp_path / "relay.backup"
    with trio.fail_after(CAP_S * 3):
        await populate_and_back_up(tmp_path / "data", target)
    unpacked = tmp_path / "unpacked"
    with tarfile.open(target) as tar:
        tar.extractall(unpacked, filter="data")
    conn = sqlite3.connect(unpacked / DATABASE_FILE)
    conn.execute("UPDATE events SET body = '\"changed\"' WHERE stream = 'log' AND seq = 3")
    conn.execute("DELETE FROM events WHERE stream = 'bob'")
    conn.commit()
    conn.close()
    altered = tmp_path / "altered.backup"
    with tarfile.open(altered, "w") as tar:
        for name in ("manifest.json", DATABASE_FILE, "server.key", "token.secret"):
            tar.add(unpacked / name, arcname=name)
    status, _, err = await trio.to_thread.run_sync(run, ["verify", str(altered)], tmp_path / "unused")
    assert status == 1
    lines = err.splitlines()
    assert "relay: table events: " in "\n".join(lines)
    assert sum("a stream's replay differs" in line for line in lines) == 2
    assert lines[-1].endswith("does not restore to what it recorded (3 problems)")


def test_restore_refuses_a_data_directory_that_holds_a_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / DATABASE_FILE).write_bytes(b"")
    backup = tmp_path / "b.tar"
    with tarfile.open(backup, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        payload = json.dumps({"format": 1, "kind": "sqlite"}).encode()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert run(["restore", str(backup)], data) == (
        1,
        "",
        f"relay: {data} holds a database already: restore into an empty data directory\n",
    )


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"other.txt": b"x"}, "is not a relay backup"),
        ({"manifest.json": b'{"format": 1, "kind": "sqlite"}', "../evil": b"x"}, "unexpected member"),
        ({"manifest.json": b'{"format": 9, "kind": "sqlite"}'}, "of format 9"),
    ],
)
def test_a_file_that_is_not_a_good_backup_is_refused_with_one_line(
    tmp_path: Path, members: dict[str, bytes], message: str
) -> None:
    backup = tmp_path / "b.tar"
    with tarfile.open(backup, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    status, out, err = run(["restore", str(backup)], tmp_path / "data")
    assert (status, out) == (1, "")
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "evil").exists()


def test_backup_refuses_to_replace_a_file_and_an_empty_data_dir(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep me")
    assert run(["backup", str(existing)], tmp_path)[0] == 1
    assert existing.read_bytes() == b"keep me"
    status, _, err = run(["backup", str(tmp_path / "new")], tmp_path / "nothing-here")
    assert status == 1
    assert "no database at" in err


def test_the_scripts_run_the_backup_commands(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATA_DIR"] = str(tmp_path / "nothing")
    for script in ("backup", "restore", "verify-backup"):
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / script), "--help"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "usage: relay-backup" in done.stdout
