"""The `relay` command tree of PROTOCOL.md §8: parsing, exit statuses, one-line refusals, admin output."""

from __future__ import annotations

import io
import json
import runpy
import sys
import time
from pathlib import Path

import pytest

from relay import crypto
from relay.cli import build_parser, main
from relay.protocol.syntax import is_uuid

pytestmark = pytest.mark.usefixtures("restore_logging")  # `relay` configures the root logger

USER = "0f0e0d0c-0b0a-4908-8706-050403020100"

#: The commands of §8 whose store methods come with a later version (accounts and devices management).
NOT_YET = [
    ["user", "show", USER],
    ["user", "delete", USER, "--yes"],
    ["device", "revoke", USER],
    ["device", "rename", USER, "Alice's phone"],
]


def run(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, environ={} if environ is None else environ, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an operator whose server keeps its data in a fresh directory."""
    return {"RELAY_DATA_DIR": str(tmp_path / "data")}


@pytest.mark.parametrize("command", NOT_YET, ids=" ".join)
def test_admin_commands_of_a_later_version_say_plainly_they_are_not_available(
    command: list[str], data_env: dict[str, str]
) -> None:
    status, out, err = run(["admin", *command], data_env)
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "is not available in this version" in err
    assert f"relay admin {command[0]} {command[1]}" in err


@pytest.mark.parametrize("command", NOT_YET, ids=" ".join)
def test_admin_json_refusal_is_one_object_on_stdout_and_one_line_on_stderr(
    command: list[str], data_env: dict[str, str]
) -> None:
    status, out, err = run(["admin", *command, "--json"], data_env)
    assert status == 1
    assert json.loads(out)["error"]["code"] == "not_available"
    assert err.count("\n") == 1


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


def test_a_postgresql_url_is_refused_rather_than_writing_to_sqlite(data_env: dict[str, str]) -> None:
    environ = data_env | {"RELAY_DATABASE_URL": "postgresql://db/relay"}
    status, out, err = run(["admin", "user", "create"], environ)
    assert (status, out) == (1, "")
    assert "PostgreSQL is not available in this version" in err
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
def test_serve_with_several_workers_is_not_available_yet(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(["serve", "--workers", "2"], {"RELAY_REDIS_URL": "redis://cache"})
    assert status == 1
    assert "more than one worker is not available in this version" in err


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
