"""Backups of a populated PostgreSQL store: backup (online, from one snapshot) → verify (in a scratch
database) → restore (into an empty database), the restored server serving the same key and events."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import psycopg
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loopback"))

from loopback_support import CAP_S, running_server

from relay.backup import main as backup_main
from relay.client import connect
from relay.store.backup_postgres import with_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def databases(postgres_url: str) -> Iterator[tuple[str, str]]:
    """Two new, empty databases on the test server: the original and the one restored into."""
    names = [f"relay_backup_{uuid.uuid4().hex[:10]}_{n}" for n in range(2)]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(postgres_url, names[0]), with_database(postgres_url, names[1])
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(argv: list[str], database: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = backup_main(argv, environ={"RELAY_DATABASE_URL": database}, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


async def test_a_postgres_backup_taken_online_verifies_and_restores_with_the_same_key_and_events(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    original, restored = databases
    target = tmp_path / "relay.backup"
    with trio.fail_after(CAP_S * 3):
        async with running_server(tmp_path / "a", database_url=original) as server:
            alice, bob = await server.devices(2)
            async with connect(alice) as a:
                acks = [(await a.publish("log", {"n": n})).seq for n in range(40)]
                await a.publish("other", "x")

                async def keep_publishing() -> None:
                    n = 0
                    while True:
                        await a.publish("busy", n)
                        n += 1

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_publishing)
                    status, out, err = await trio.to_thread.run_sync(run, ["backup", str(target)], original)
                    nursery.cancel_scope.cancel()
        assert status == 0, err
        status, out, err = await trio.to_thread.run_sync(run, ["verify", str(target)], original)
        assert (status, err.count("relay:")) == (0, 0), err
        assert "everything matches" in out
        status, out, err = await trio.to_thread.run_sync(run, ["restore", str(target)], restored)
        assert status == 0, err
        again = await trio.to_thread.run_sync(run, ["restore", str(target)], restored)
        async with running_server(tmp_path / "b", database_url=restored) as copy:
            moved = attrs.evolve(bob, url=copy.url)
            async with connect(moved) as b:  # the same server key (it lives in the database)
                pages = [p async for p in b.replay_to_head("log")]
    assert [e.seq for p in pages for e in p.events] == acks
    assert again[0] == 1
    assert "holds relay's tables already" in again[2]
    with tarfile.open(target) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "relay.pgdump"]
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest["kind"] == "postgres"
    assert manifest["tables"]["devices"] == 2
    assert manifest["tables"]["server_secrets"] == 2  # the signing seed and the token secret


async def test_verify_reports_a_backup_that_does_not_match_its_manifest(
    tmp_path: Path, databases: tuple[str, str]
) -> None:
    original, _ = databases
    target = tmp_path / "relay.backup"
    with trio.fail_after(CAP_S * 2):
        async with running_server(tmp_path / "a", database_url=original) as server:
            (alice,) = await server.devices(1)
            async with connect(alice) as a:
                for n in range(5):
                    await a.publish("log", n)
        assert (await trio.to_thread.run_sync(run, ["backup", str(target)], original))[0] == 0
        altered = tmp_path / "altered.backup"
        with tarfile.open(target) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            dump = tar.extractfile("relay.pgdump").read()  # type: ignore[union-attr]
        manifest["tables"]["events"] += 1
        manifest["streams"][0]["sha256"] = "0" * 64
        with tarfile.open(altered, "w") as tar:
            for name, payload in (("manifest.json", json.dumps(manifest).encode()), ("relay.pgdump", dump)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        status, _, err = await trio.to_thread.run_sync(run, ["verify", str(altered)], original)
    assert status == 1
    assert "relay: table events: 5 rows, the backup recorded 6" in err
    assert "a stream's replay differs" in err
