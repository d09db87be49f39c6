"""The `relay` command tree of PROTOCOL.md §8: parsing, exit statuses, one-line refusals."""

from __future__ import annotations

import io
import json
import runpy
import sys

import pytest

from relay.cli import build_parser, main

USER = "0f0e0d0c-0b0a-4908-8706-050403020100"

ADMIN_COMMANDS = [
    ["user", "create"],
    ["user", "list"],
    ["user", "show", USER],
    ["user", "delete", USER, "--yes"],
    ["device", "list", "--user", USER],
    ["device", "revoke", USER],
    ["device", "rename", USER, "Alice's phone"],
    ["token", "create", "--user", USER],
    ["db", "migrate"],
    ["db", "status"],
]


def run(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, environ={} if environ is None else environ, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=" ".join)
def test_admin_commands_parse_and_say_plainly_they_are_not_available_yet(command: list[str]) -> None:
    status, out, err = run(["admin", *command])
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "is not available in this version" in err
    assert f"relay admin {command[0]} {command[1]}" in err


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=" ".join)
def test_admin_json_refusal_is_one_object_on_stdout_and_one_line_on_stderr(command: list[str]) -> None:
    status, out, err = run(["admin", *command, "--json"])
    assert status == 1
    assert json.loads(out)["error"]["code"] == "not_available"
    assert err.count("\n") == 1


def test_deleting_a_user_without_yes_is_refused() -> None:
    status, out, err = run(["admin", "user", "delete", USER])
    assert (status, out) == (1, "")
    assert err == "relay: refusing to delete a user without --yes\n"


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
