"""The README's first journey, as a person types it: serve, create a user, enrol two devices, tail on
one and publish on the other; then come back later and catch up."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import trio
from e2e_support import CAP_S, relay, relay_background, relay_env, relay_serve


async def test_an_event_published_on_one_device_appears_in_the_tail_of_the_other(tmp_path: Path) -> None:
    env = relay_env(tmp_path)
    with trio.fail_after(CAP_S * 2):
        async with relay_serve(env) as server:
            created = await relay("admin", "user", "create", "--json", env=env)
            assert created.code == 0, created.stderr
            user = created.json()
            phone = await relay(
                "device",
                "enroll",
                "--url",
                server.url,
                "--token",
                user["token"],
                "--name",
                "Phone",
                "--json",
                env=env,
                cwd=tmp_path,
            )
            assert phone.code == 0, phone.stderr
            second_token = (
                await relay("admin", "token", "create", "--user", user["user_id"], "--json", env=env)
            ).json()
            laptop = await relay(
                "device",
                "enroll",
                "--url",
                server.url,
                "--token",
                second_token["token"],
                "--name",
                "Laptop",
                "--device-file",
                "laptop.json",
                env=env,
                cwd=tmp_path,
            )
            assert laptop.code == 0, laptop.stderr

            async with relay_background(
                "device", "tail", "--count", "2", "--device-file", "laptop.json", env=env, cwd=tmp_path
            ) as tail:
                # Publish until the tail (which starts at the current heads) has seen two events.
                published = []
                while len(tail.lines) < 2:
                    ran = await relay(
                        "device", "publish", "notes", '{"text": "hello"}', env=env, cwd=tmp_path
                    )
                    assert ran.code == 0, ran.stderr
                    published.append(json.loads(ran.stdout))
                    with trio.move_on_after(1):
                        await tail.wait_lines(len(published))
            assert tail.code == 0, bytes(tail.stderr).decode()

            # Laptop goes away; the phone publishes three more, from stdin; the next tail resumes.
            later = [
                await relay(
                    "device", "publish", "notes", env=env, cwd=tmp_path, stdin=json.dumps({"n": n}).encode()
                )
                for n in range(3)
            ]
            resumed = await relay(
                "device", "tail", "--count", "3", "--device-file", "laptop.json", env=env, cwd=tmp_path
            )

    phone_device = phone.json()
    shown = [json.loads(line) for line in tail.lines]
    assert [e["body"] for e in shown] == [{"text": "hello"}] * 2
    assert {e["device_id"] for e in shown} == {phone_device["device_id"]}
    tail_seqs = [e["seq"] for e in shown]
    assert tail_seqs == [p["seq"] for p in published[-2:]]
    assert resumed.code == 0, resumed.stderr
    caught_up = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert [e["body"] for e in caught_up] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [e["seq"] for e in caught_up] == [json.loads(r.stdout)["seq"] for r in later]
    for name in ("relay-device.json", "laptop.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    assert phone_device["name"] == "Phone"


async def test_device_commands_refuse_with_one_line(tmp_path: Path) -> None:
    env = relay_env(tmp_path)
    with trio.fail_after(CAP_S):
        missing = await relay("device", "publish", "notes", "1", env=env, cwd=tmp_path)
        bad_stream = await relay("device", "publish", "bad stream", "1", env=env, cwd=tmp_path)
        unreachable = await relay(
            "device",
            "enroll",
            "--url",
            "http://127.0.0.1:9",
            "--token",
            "x",
            "--name",
            "n",
            env=env,
            cwd=tmp_path,
        )
        bad_uri = await relay(
            "device", "enroll", "--uri", "https://example", "--name", "n", env=env, cwd=tmp_path
        )
        async with relay_serve(env) as server:
            bad_token = await relay(
                "device",
                "enroll",
                "--url",
                server.url,
                "--token",
                "A" * 43,
                "--name",
                "n",
                env=env,
                cwd=tmp_path,
            )
    assert (missing.code, missing.stderr.strip()) == (
        1,
        "relay: no device file at relay-device.json (enrol first: relay device enroll)",
    )
    assert bad_stream.code == 2
    assert "not a stream name" in bad_stream.stderr
    assert unreachable.code == 1
    assert unreachable.stderr.strip().startswith("relay: cannot reach http://127.0.0.1:9")
    assert bad_uri.code == 1
    assert "not a pairing URI" in bad_uri.stderr
    assert (bad_token.code, bad_token.stderr.strip()) == (1, "relay: refused: invalid_token: Invalid token")
    assert not (tmp_path / "relay-device.json").exists()
    assert "Traceback" not in missing.stderr + unreachable.stderr + bad_uri.stderr + bad_token.stderr
