"""The whole journey of one person's devices, driven as a user would, through `relay admin` and
`relay device` as processes against a real `relay serve`: enrol, pair, publish both ways, go offline
and catch up, rename, revoke (by a device and by the operator) while connected, delete the account,
and find nothing left."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel
from e2e_support import CAP_S, Ran, relay, relay_background, relay_env, relay_serve

from relay.store.sqlite import DATABASE_FILE


def ok(ran: Ran) -> Any:
    """The command succeeded: its one JSON object, or its text when it printed lines."""
    assert ran.code == 0, ran.stderr
    text = ran.stdout.strip()
    return json.loads(text) if text.startswith("{") and "\n" not in text else ran.stdout


async def online(device_file: str, device_id: str, *, env: dict[str, str], cwd: Path) -> None:
    """Wait until ``device_id`` shows online in the device list (its tail has connected)."""
    while True:
        listed = ok(await relay("device", "list", "--json", "--device-file", device_file, env=env, cwd=cwd))
        if any(d["device_id"] == device_id and d["online"] for d in listed["devices"]):
            return
        await trio.sleep(0.1)


async def test_one_persons_devices_from_enrolment_to_account_deletion(tmp_path: Path) -> None:
    env = relay_env(tmp_path)
    cwd = tmp_path

    async def device(*args: str) -> Ran:
        return await relay("device", *args, env=env, cwd=cwd)

    with trio.fail_after(CAP_S * 8):
        async with relay_serve(env) as server:
            # The operator creates the user; the first device enrols with the operator's token.
            user = ok(await relay("admin", "user", "create", "--json", env=env))
            phone = ok(
                await device(
                    "enroll",
                    "--url",
                    server.url,
                    "--token",
                    user["token"],
                    "--name",
                    "Phone",
                    "--device-file",
                    "phone.json",
                    "--json",
                )
            )
            # The phone pairs the laptop: a pairing URI carries the URL, a token and the server key.
            pairing = ok(await device("pair", "--json", "--device-file", "phone.json"))
            assert pairing["uri"].startswith("relay:pair?url=")
            laptop = ok(
                await device(
                    "enroll",
                    "--uri",
                    pairing["uri"],
                    "--name",
                    "Laptop",
                    "--device-file",
                    "laptop.json",
                    "--json",
                )
            )
            assert laptop["user_id"] == phone["user_id"] == user["user_id"]
            reused = await device(
                "enroll", "--uri", pairing["uri"], "--name", "Again", "--device-file", "x.json"
            )
            assert (reused.code, reused.stderr.strip()) == (1, "relay: refused: invalid_token: Invalid token")

            # Both publish, and each sees the other's event live.
            async with relay_background(
                "device", "tail", "--count", "1", "--device-file", "laptop.json", env=env, cwd=cwd
            ) as laptop_tail:
                await online("phone.json", laptop["device_id"], env=env, cwd=cwd)
                ok(await device("publish", "notes", '{"from": "phone"}', "--device-file", "phone.json"))
            async with relay_background(
                "device", "tail", "--count", "1", "--device-file", "phone.json", env=env, cwd=cwd
            ) as phone_tail:
                await online("laptop.json", phone["device_id"], env=env, cwd=cwd)
                ok(await device("publish", "notes", '{"from": "laptop"}', "--device-file", "laptop.json"))
            assert (laptop_tail.code, phone_tail.code) == (0, 0)
            assert [json.loads(line)["body"] for line in laptop_tail.lines] == [{"from": "phone"}]
            assert [json.loads(line)["body"] for line in phone_tail.lines] == [{"from": "laptop"}]

            # The laptop is offline while the phone publishes 250 events; it comes back and catches up.
            lines = "".join(json.dumps({"n": n}) + "\n" for n in range(250))
            published = await relay(
                "device",
                "publish",
                "notes",
                "--lines",
                "--device-file",
                "phone.json",
                env=env,
                cwd=cwd,
                stdin=lines.encode(),
            )
            acks = [json.loads(line) for line in ok(published).splitlines()]
            assert [a["seq"] for a in acks] == list(range(3, 253))
            # (It resumes after the last event its tail showed, so its own publish comes first.)
            caught_up = await device("tail", "--count", "251", "--device-file", "laptop.json")
            events = [json.loads(line) for line in ok(caught_up).splitlines()]
            assert [e["seq"] for e in events] == list(range(2, 253))
            assert [e["body"] for e in events] == [{"from": "laptop"}] + [{"n": n} for n in range(250)]

            # A rename that collides is refused and changes nothing; then one succeeds.
            taken = await device("rename", "PHONE", "--device-file", "laptop.json")
            assert taken.code == 1
            assert (
                taken.stderr.strip()
                == "relay: refused: name_taken: This name is already used by another device"
            )
            ok(await device("rename", "Work laptop", "--device-file", "laptop.json"))
            names = {
                d["name"]
                for d in ok(await device("list", "--json", "--device-file", "phone.json"))["devices"]
            }
            assert names == {"Phone", "Work laptop"}

            # The phone revokes the laptop while the laptop is connected: its session closes at once.
            async with relay_background(
                "device", "tail", "--device-file", "laptop.json", env=env, cwd=cwd
            ) as gone:
                await online("phone.json", laptop["device_id"], env=env, cwd=cwd)
                ok(await device("revoke", laptop["device_id"], "--device-file", "phone.json"))
            assert gone.code == 1
            assert "device_revoked" in bytes(gone.stderr).decode()
            refused = await device("list", "--device-file", "laptop.json")
            assert (refused.code, refused.stderr.strip()) == (
                1,
                "relay: refused: device_revoked: This device has been revoked",
            )

            # The operator revokes a third device from another process: its session closes within ~1.5 s.
            pairing = ok(await device("pair", "--json", "--device-file", "phone.json"))
            tablet = ok(
                await device(
                    "enroll",
                    "--uri",
                    pairing["uri"],
                    "--name",
                    "Tablet",
                    "--device-file",
                    "tablet.json",
                    "--json",
                )
            )
            async with relay_background(
                "device", "tail", "--device-file", "tablet.json", env=env, cwd=cwd
            ) as cut:
                await online("phone.json", tablet["device_id"], env=env, cwd=cwd)
                ok(await relay("admin", "device", "revoke", tablet["device_id"], env=env))
                returned = time.monotonic()
                assert cut.process is not None
                await cut.process.wait()
                closed_after = time.monotonic() - returned
            assert cut.code == 1
            assert "device_revoked" in bytes(cut.stderr).decode()
            assert closed_after < 1.5

            # The account is deleted from the phone while the phone itself is connected.
            async with relay_background(
                "device", "tail", "--device-file", "phone.json", env=env, cwd=cwd
            ) as last:
                await trio.lowlevel.checkpoint()
                await online("phone.json", phone["device_id"], env=env, cwd=cwd)
                deleted = ok(await device("delete-account", "--yes", "--json", "--device-file", "phone.json"))
            assert deleted == {"deleted": {"devices": 3, "streams": 1, "events": 252}}
            assert last.code == 1
            assert "account_deleted" in bytes(last.stderr).decode()
            after = await device("list", "--device-file", "phone.json")
            assert (after.code, after.stderr.strip()) == (
                1,
                "relay: refused: account_deleted: This account has been deleted",
            )
            shown = await relay("admin", "user", "show", user["user_id"], env=env)
            assert shown.code == 1

    # Nothing of the user is left in the database: no id, no name, no body.
    data = b"".join(p.read_bytes() for p in (tmp_path / "data").glob(DATABASE_FILE + "*"))
    for trace in (user["user_id"], phone["device_id"], laptop["device_id"], tablet["device_id"]):
        assert trace.encode() not in data
    for trace in (b"Work laptop", b"Tablet", b'{"from":"phone"}', b'{"n":249}'):
        assert trace not in data
