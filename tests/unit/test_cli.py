"""The `relay` command tree of PROTOCOL.md §8: parsing, exit statuses, one-line refusals, admin output."""

from __future__ import annotations

import io
import json
import runpy
import sys
import time
from pathlib import Path

import pytest
import trio

from relay import crypto
from relay.cli import build_parser, main
from relay.protocol.names import device_name_key
from relay.protocol.syntax import is_uuid
from relay.store.base import Enrollment
from relay.store.sqlite import SqliteStore

pytestmark = pytest.mark.usefixtures("restore_logging")  # `relay` configures the root logger

USER = "0f0e0d0c-0b0a-4908-8706-050403020100"


def run(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, environ={} if environ is None else environ, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an operator whose server keeps its data in a fresh directory."""
    return {"RELAY_DATA_DIR": str(tmp_path / "data")}


def enroll(data_env: dict[str, str], user_token: str, name: str) -> str:
    """Enrol a device with an operator token, straight in the store the admin commands use."""

    async def go() -> str:
        store = await SqliteStore.open(Path(data_env["RELAY_DATA_DIR"]))
        try:
            key = crypto.SigningKey.generate()
            device = await store.enroll(
                Enrollment(
                    token_hash=crypto.hash_token(crypto.b64decode(user_token, crypto.TOKEN_BYTES) or b""),
                    public_key=key.public_key,
                    name=name,
                    name_key=device_name_key(name),
                    max_devices=20,
                    now_ms=int(time.time() * 1000),
                )
            )
            return device.device_id
        finally:
            await store.close()

    return trio.run(go)


def user_with_devices(data_env: dict[str, str], *names: str) -> tuple[str, list[str]]:
    user = json.loads(run(["admin", "user", "create", "--json"], data_env)[1])
    devices = [enroll(data_env, user["token"], names[0])] if names else []
    for name in names[1:]:
        token = json.loads(
            run(["admin", "token", "create", "--user", user["user_id"], "--json"], data_env)[1]
        )
        devices.append(enroll(data_env, token["token"], name))
    return user["user_id"], devices


def test_deleting_a_user_without_yes_is_refused(data_env: dict[str, str]) -> None:
    status, out, err = run(["admin", "user", "delete", USER], data_env)
    assert (status, out) == (1, "")
    assert err == "relay: refusing to delete a user without --yes\n"


# --- the admin commands of this version, on the SQLite store of RELAY_DATA_DIR --------------------------


def test_user_create_json_is_the_user_id_and_a_single_use_token(data_env: dict[str, str]) -> None:
    before = int(time.time() * 1000)
    status, out, err = run(["admin", "user", "create", "--json"], data_env)
    assert (status, err) == (0, "")
    created = json.loads(out)
    assert list(created) == ["user_id", "token", "expires_at"]
    assert is_uuid(created["user_id"])
    assert crypto.b64decode(created["token"], crypto.TOKEN_BYTES) is not None
    assert before + 900_000 <= created["expires_at"] <= int(time.time() * 1000) + 900_000
    assert out.count("\n") == 1


def test_user_create_for_people_prints_a_short_table(data_env: dict[str, str]) -> None:
    status, out, err = run(["admin", "user", "create"], data_env | {"RELAY_TOKEN_TTL_S": "60"})
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["user_id", "token", "expires_at"]
    assert is_uuid(lines[0].split()[1])


def test_users_tokens_and_devices_are_listed_and_issued(data_env: dict[str, str]) -> None:
    first = json.loads(run(["admin", "user", "create", "--json"], data_env)[1])
    second = json.loads(run(["admin", "user", "create", "--json"], data_env)[1])

    status, out, _ = run(["admin", "user", "list", "--json"], data_env)
    assert status == 0
    assert json.loads(out) == {"users": [{"user_id": first["user_id"]}, {"user_id": second["user_id"]}]}
    status, out, _ = run(["admin", "user", "list"], data_env)
    assert out.splitlines() == ["USER ID", first["user_id"], second["user_id"]]

    status, out, err = run(["admin", "token", "create", "--user", first["user_id"], "--json"], data_env)
    assert (status, err) == (0, "")
    token = json.loads(out)
    assert token["user_id"] == first["user_id"]
    assert token["token"] != first["token"]

    status, out, _ = run(["admin", "device", "list", "--user", first["user_id"], "--json"], data_env)
    assert (status, json.loads(out)) == (0, {"user_id": first["user_id"], "devices": []})
    status, out, _ = run(["admin", "device", "list", "--user", first["user_id"]], data_env)
    assert out == f"user {first['user_id']} has no devices\n"


def test_an_empty_server_lists_no_users(data_env: dict[str, str]) -> None:
    assert run(["admin", "user", "list", "--json"], data_env)[:2] == (0, '{"users": []}\n')
    assert run(["admin", "user", "list"], data_env)[:2] == (0, "no users\n")


@pytest.mark.parametrize(
    "command", [["token", "create", "--user", USER], ["device", "list", "--user", USER]], ids=" ".join
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_unknown_user_is_refused_with_one_line(
    command: list[str], as_json: bool, data_env: dict[str, str]
) -> None:
    status, out, err = run(["admin", *command, *(["--json"] if as_json else [])], data_env)
    assert status == 1
    assert err == f"relay: no user with id {USER}\n"
    if as_json:
        assert json.loads(out) == {"error": {"code": "not_found", "message": f"no user with id {USER}"}}
    else:
        assert out == ""
    assert run(["admin", "user", "list", "--json"], data_env)[1] == '{"users": []}\n'  # nothing created


def test_user_show_counts_devices_streams_and_events(data_env: dict[str, str]) -> None:
    user_id, devices = user_with_devices(data_env, "Phone", "Laptop")
    assert run(["admin", "device", "revoke", devices[1]], data_env)[0] == 0
    status, out, err = run(["admin", "user", "show", user_id, "--json"], data_env)
    assert (status, err) == (0, "")
    shown = json.loads(out)
    assert list(shown) == [
        "user_id",
        "created_at",
        "devices",
        "revoked_devices",
        "streams",
        "events",
        "stored_bytes",
    ]
    assert (shown["user_id"], shown["devices"], shown["revoked_devices"]) == (user_id, 1, 1)
    assert (shown["streams"], shown["events"], shown["stored_bytes"]) == (0, 0, 0)
    status, out, _ = run(["admin", "user", "show", user_id], data_env)
    assert out.splitlines()[0] == f"user_id          {user_id}"


def test_user_delete_with_yes_deletes_everything_and_says_what(data_env: dict[str, str]) -> None:
    user_id, devices = user_with_devices(data_env, "Phone", "Laptop")
    other, _ = user_with_devices(data_env, "Tablet")
    status, out, err = run(["admin", "user", "delete", user_id, "--yes", "--json"], data_env)
    assert (status, err) == (0, "")
    assert json.loads(out) == {"user_id": user_id, "deleted": {"devices": 2, "streams": 0, "events": 0}}
    assert run(["admin", "user", "show", user_id], data_env)[0] == 1
    assert run(["admin", "device", "revoke", devices[0]], data_env)[0] == 1
    listed = json.loads(run(["admin", "user", "list", "--json"], data_env)[1])
    assert listed == {"users": [{"user_id": other}]}
    again = run(["admin", "user", "delete", user_id, "--yes"], data_env)
    assert again == (1, "", f"relay: no user with id {user_id}\n")


def test_device_revoke_is_idempotent_and_frees_the_name(data_env: dict[str, str]) -> None:
    user_id, (phone, laptop) = user_with_devices(data_env, "Phone", "Laptop")
    status, out, err = run(["admin", "device", "revoke", phone, "--json"], data_env)
    assert (status, err) == (0, "")
    revoked = json.loads(out)
    assert (revoked["device_id"], revoked["user_id"]) == (phone, user_id)
    status, out, _ = run(["admin", "device", "revoke", phone, "--json"], data_env)
    assert (status, json.loads(out)) == (0, revoked)  # the first revocation's time, unchanged
    status, out, _ = run(["admin", "device", "revoke", phone], data_env)
    assert out.startswith(f"device {phone} was already revoked at ")
    # Its name is free again: the laptop may take it.
    status, out, _ = run(["admin", "device", "rename", laptop, "phone", "--json"], data_env)
    assert (status, json.loads(out)["name"]) == (0, "phone")


def test_device_rename_refuses_a_taken_name_an_unknown_device_and_a_bad_name(
    data_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, (phone, laptop) = user_with_devices(data_env, "Phone", "Laptop")
    taken = run(["admin", "device", "rename", laptop, "PHONE"], data_env)
    assert taken == (1, "", "relay: another device of the user is named 'PHONE'\n")
    status, out, _ = run(["admin", "device", "rename", laptop, "PHONE", "--json"], data_env)
    assert (status, json.loads(out)["error"]["code"]) == (1, "name_taken")
    unknown = run(["admin", "device", "rename", USER, "Desk"], data_env)
    assert unknown == (1, "", f"relay: no device with id {USER} that is not revoked\n")
    status, out, _ = run(["admin", "device", "rename", laptop, "  Desk  ", "--json"], data_env)
    assert (status, json.loads(out)["name"]) == (0, "Desk")  # stored trimmed
    with pytest.raises(SystemExit) as caught:
        main(["admin", "device", "rename", phone, "bad\u0000name"], environ=data_env)
    assert caught.value.code == 2
    assert "is not a device name" in capsys.readouterr().err
    listed = json.loads(
        run(["admin", "device", "list", "--user", _user_of(data_env, phone), "--json"], data_env)[1]
    )
    assert [d["name"] for d in listed["devices"]] == ["Phone", "Desk"]


def _user_of(data_env: dict[str, str], device_id: str) -> str:
    for user in json.loads(run(["admin", "user", "list", "--json"], data_env)[1])["users"]:
        listed = json.loads(
            run(["admin", "device", "list", "--user", user["user_id"], "--json"], data_env)[1]
        )
        if any(d["device_id"] == device_id for d in listed["devices"]):
            return str(user["user_id"])
    raise AssertionError("no such device")


@pytest.mark.parametrize(
    "command",
    [["user", "show", USER], ["user", "delete", USER, "--yes"], ["device", "revoke", USER]],
    ids=" ".join,
)
def test_an_unknown_id_is_refused_with_one_line_and_a_json_error(
    command: list[str], data_env: dict[str, str]
) -> None:
    status, out, err = run(["admin", *command, "--json"], data_env)
    assert status == 1
    assert json.loads(out)["error"]["code"] == "not_found"
    assert err.count("\n") == 1


def test_db_status_then_migrate_then_status(data_env: dict[str, str]) -> None:
    status, out, _ = run(["admin", "db", "status", "--json"], data_env)
    pending = json.loads(out)
    assert status == 0
    assert pending["applied"] == []
    assert pending["pending"]

    status, out, _ = run(["admin", "db", "migrate", "--json"], data_env)
    assert (status, json.loads(out)) == (0, {"applied": pending["pending"]})
    status, out, _ = run(["admin", "db", "migrate"], data_env)
    assert (status, out) == (0, "the database is up to date\n")

    status, out, _ = run(["admin", "db", "status", "--json"], data_env)
    assert json.loads(out) == {"applied": pending["pending"], "pending": []}
    status, out, _ = run(["admin", "db", "status"], data_env)
    assert out.splitlines()[-1] == "the database is up to date"


def test_admin_commands_apply_pending_migrations_like_serve(data_env: dict[str, str]) -> None:
    assert run(["admin", "user", "list"], data_env)[0] == 0
    assert json.loads(run(["admin", "db", "status", "--json"], data_env)[1])["pending"] == []


def test_an_unusable_data_dir_is_refused_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status, out, err = run(["admin", "user", "create", "--json"], {"RELAY_DATA_DIR": str(blocker)})
    assert status == 1
    assert json.loads(out)["error"]["code"] == "unavailable"
    assert err.count("\n") == 1
    assert err.startswith("relay: the database is unavailable: ")


def test_an_unreachable_postgresql_is_refused_rather_than_writing_to_sqlite(data_env: dict[str, str]) -> None:
    environ = data_env | {"RELAY_DATABASE_URL": "postgresql://relay:hunter2@127.0.0.1:9/relay"}
    status, out, err = run(["admin", "user", "create"], environ)
    assert (status, out) == (1, "")
    assert err.startswith("relay: the database is unavailable: ")
    assert err.count("\n") == 1
    assert "hunter2" not in err
    assert not Path(data_env["RELAY_DATA_DIR"]).exists()


@pytest.mark.postgres
def test_admin_commands_run_on_postgresql_when_it_is_configured(
    postgres_url: str, data_env: dict[str, str]
) -> None:
    environ = data_env | {"RELAY_DATABASE_URL": postgres_url}
    status, out, err = run(["admin", "user", "create", "--json"], environ)
    assert (status, err) == (0, ""), err
    user_id = json.loads(out)["user_id"]
    listed = json.loads(run(["admin", "user", "list", "--json"], environ)[1])
    assert {"user_id": user_id} in listed["users"]
    assert run(["admin", "user", "delete", user_id, "--yes"], environ)[0] == 0
    assert not Path(data_env["RELAY_DATA_DIR"]).exists()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["admin"],
        ["admin", "user"],
        ["admin", "user", "show"],
        ["admin", "user", "show", "not-a-uuid"],
        ["admin", "user", "show", USER.upper()],
        ["admin", "device", "list"],
        ["admin", "device", "rename", USER],
        ["admin", "device", "rename", USER, "   "],
        ["admin", "token", "create"],
        ["admin", "db", "drop"],
        ["serve", "--port", "http"],
        ["serve", "--port", "70000"],
        ["serve", "--workers", "0"],
        ["serve", "--bogus"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv, environ={})
    assert caught.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"], environ={})
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("relay 0.")


@pytest.mark.parametrize("argv", [["serve"], ["admin", "db", "status"]])
def test_a_bad_setting_exits_2_with_one_line_naming_it(argv: list[str]) -> None:
    status, out, err = run(argv, {"RELAY_HEARTBEAT_MS": "0"})
    assert (status, out) == (2, "")
    assert err.startswith("relay: RELAY_HEARTBEAT_MS=0: ")
    assert err.count("\n") == 1


def test_serve_with_several_workers_needs_redis() -> None:
    status, _, err = run(["serve", "--workers", "2"])
    assert status == 2
    assert err.startswith("relay: --workers=2: more than one worker needs RELAY_REDIS_URL")


@pytest.mark.usefixtures("restore_logging")
def test_serve_with_several_workers_on_a_busy_port_exits_1_before_starting_any(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        environ = {"RELAY_REDIS_URL": "redis://127.0.0.1:9/0", "RELAY_DATA_DIR": str(tmp_path)}
        status, _, err = run(["serve", "--workers", "2", "--port", str(port)], environ)
    assert status == 1
    assert f"cannot listen on 127.0.0.1 port {port}" in err


def test_the_parser_knows_every_command_of_section_8() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "0", "--workers", "1"])
    assert (args.command, args.host, args.port, args.workers) == ("serve", "0.0.0.0", 0, 1)
    args = parser.parse_args(["admin", "device", "rename", USER, "Phone", "--json"])
    assert (args.admin_command, args.id, args.name, args.json) == ("device rename", USER, "Phone", True)


def test_python_dash_m_relay_is_the_relay_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["relay", "--version"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("relay", run_name="__main__", alter_sys=True)
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("relay 0.")


@pytest.mark.parametrize("option", ["--token", "--server-key"])
def test_a_base64url_value_that_begins_with_a_dash_is_a_value_not_an_option(option: str) -> None:
    value = "-" + "A" * 42
    args = build_parser().parse_args(
        main.__globals__["_joined_values"](
            [
                "device",
                "enroll",
                "--url",
                "http://h",
                option,
                value,
                "--name",
                "n",
                *(["--token", "t"] if option != "--token" else []),
            ]
        )
    )
    assert getattr(args, option.removeprefix("--").replace("-", "_")) == value
