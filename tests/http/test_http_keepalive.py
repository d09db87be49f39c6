"""Keep-alive connections survive answers that did not read the request body (found by schemathesis).

Behind Hypercorn, an answer given before the request's body had arrived (a ``405``, a ``404``, a
``401`` refused on its header, a ``GET`` with a body) left the connection in a state where the next
request on it was never answered. Every answer now waits for the body (:mod:`relay.http.errors`), or
closes the connection when the body is over the limit or does not arrive in time. These tests run
on a real server on loopback, one client connection reused for every request, each request capped.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest
import requests
from live_support import CALL_CAP_S, LiveRelay, live_relay

from relay.http import errors

#: Requests sent on one connection per test: the hang showed within a few when it was there.
ROUNDS = 40
#: A request's cap: a loopback answer takes milliseconds; the hang never answered.
ANSWER_CAP_S = 2.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    with live_relay(tmp_path_factory.mktemp("keepalive")) as started:
        yield started


def statuses_on_one_connection(live: LiveRelay, requests_to_send: list[tuple[str, str, bytes]]) -> list[int]:
    with requests.Session() as session:
        out = []
        for method, path, body in requests_to_send:
            answer = session.request(method, live.url + path, data=body, timeout=ANSWER_CAP_S)
            out.append(answer.status_code)
        return out


BODY = b'{"name": "0", "public_key": "' + b"x" * 180 + b'"}'


def test_answers_that_leave_a_body_unread_keep_the_connection_answering(live: LiveRelay) -> None:
    mix = [
        ("PUT", "/v1/enroll", BODY),
        ("TRACE", "/v1/enroll", BODY),
        ("GET", "/healthz", BODY),
        ("PATCH", "/v1/devices/not-a-device", BODY),
        ("POST", "/v1/pairings", BODY),
        ("DELETE", "/v1/enroll", BODY),
    ]
    expected = {"PUT": 405, "TRACE": 405, "GET": 200, "PATCH": 404, "POST": 401, "DELETE": 405}
    sent = list(itertools.islice(itertools.cycle(mix), ROUNDS))
    assert statuses_on_one_connection(live, sent) == [expected[method] for method, _, _ in sent]


def test_a_body_over_the_limit_closes_the_connection_after_its_answer(live: LiveRelay) -> None:
    too_big = b"x" * (live.runtime.settings.max_frame_bytes + 1)
    with requests.Session() as session:
        answer = session.post(live.url + "/v1/pairings", data=too_big, timeout=CALL_CAP_S)
        after = session.get(live.url + "/healthz", timeout=ANSWER_CAP_S)
    assert (answer.status_code, answer.headers.get("Connection")) == (401, "close")
    assert after.status_code == 200


def test_a_body_that_was_read_keeps_the_connection_open(live: LiveRelay) -> None:
    with requests.Session() as session:
        answer = session.post(live.url + "/v1/enroll", data=b"{}", timeout=CALL_CAP_S)
    assert answer.status_code == 400
    assert answer.headers.get("Connection") is None


def test_a_body_that_does_not_arrive_in_time_gets_its_answer_with_connection_close(
    live: LiveRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(errors, "BODY_DRAIN_S", 0.2)
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=CALL_CAP_S) as raw:
        raw.sendall(b"PUT /v1/enroll HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 100\r\n\r\n{")
        answer = b""
        while b"\r\n\r\n" not in answer:
            received = raw.recv(4096)
            assert received, "closed without an answer"
            answer += received
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 405")
    assert b"\r\nconnection: close" in head
