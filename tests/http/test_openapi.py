"""``GET /openapi.json`` and ``docs/openapi.json``: one document, valid OpenAPI 3.1, listing exactly the
app's routes and methods, with examples that match their schemas.

What the live server answers is checked against the document by ``test_openapi_schemathesis.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
from http_support import Relay
from openapi_spec_validator import OpenAPIV31SpecValidator
from trio.testing import MockClock

from relay.http.openapi import DOCUMENT_PATH

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: Quart's static-file route (QuartTrio's default ``static_folder``). relay has no static folder, so
#: every path under it is ``404 not_found``, like any unknown route: not an endpoint to document.
QUART_STATIC_ENDPOINT = "static"


def document() -> dict[str, Any]:
    loaded = json.loads(DOCS.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


async def test_the_served_document_is_docs_openapi_json_byte_for_byte(
    relay: Relay, autojump_clock: MockClock
) -> None:
    response = await relay.client.get("/openapi.json")
    served = await response.get_data()
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Request-ID"]
    assert served == DOCS.read_bytes(), (
        f"{DOCUMENT_PATH.relative_to(ROOT)} differs from docs/openapi.json: copy docs/openapi.json over it"
    )


async def test_the_document_takes_no_query_parameter(relay: Relay, autojump_clock: MockClock) -> None:
    answer = await relay.request("GET", "/openapi.json?format=yaml")
    assert answer.status == 400
    assert answer.body["error"]["path"] == "$.query.format"


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(doc).validate()


def test_the_document_is_written_deterministically() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


async def test_every_route_and_method_of_the_app_is_documented_and_nothing_else(
    relay: Relay, autojump_clock: MockClock
) -> None:
    served: set[tuple[str, str]] = set()
    for rule in relay.app.url_map.iter_rules():
        if rule.endpoint == QUART_STATIC_ENDPOINT:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        served |= {(path, method.lower()) for method in rule.methods or ()}
    documented = {(path, method) for path, method, _ in operations(document())}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


async def test_the_static_route_of_quart_serves_nothing(relay: Relay, autojump_clock: MockClock) -> None:
    for target in ("/static/openapi.json", "/static/../app.py", "/static/"):
        answer = await relay.request("GET", target)
        assert (answer.status, answer.body["error"]["code"]) == (404, "not_found")


def test_operation_ids_are_unique_and_every_http_answer_carries_x_request_id() -> None:
    doc = document()
    ids = [operation["operationId"] for _, _, operation in operations(doc)]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations(doc):
        for status, answer in operation["responses"].items():
            if status == "101":  # the WebSocket upgrade: the gateway's, and it has none
                continue
            answer = resolve(doc, answer)
            assert "X-Request-ID" in answer.get("headers", {}), (path, method, status)


def test_signed_operations_are_those_of_section_3() -> None:
    signed = {
        (path, method) for path, method, operation in operations(document()) if operation.get("security")
    }
    assert signed == {
        ("/v1/pairings", "post"),
        ("/v1/devices", "get"),
        ("/v1/devices", "head"),
        ("/v1/devices/{device_id}", "patch"),
        ("/v1/devices/{device_id}", "delete"),
        ("/v1/user", "delete"),
    }


def test_every_signed_operation_can_answer_401_403_410_413_429_and_503() -> None:
    for path, method, operation in operations(document()):
        if operation.get("security"):
            assert {"400", "401", "403", "410", "413", "429", "500", "503"} <= set(operation["responses"]), (
                path,
                method,
            )


def media_examples(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example value) of every example of a JSON body, request and response alike."""
    for path, method, operation in operations(doc):
        bodies = []
        if "requestBody" in operation:
            bodies.append(("request", operation["requestBody"]))
        bodies += [(status, resolve(doc, answer)) for status, answer in operation["responses"].items()]
        for where, body in bodies:
            for media_type, media in body.get("content", {}).items():
                if media_type != "application/json":
                    continue
                for name, example in media.get("examples", {}).items():
                    yield (
                        f"{method.upper()} {path} {where} {name}",
                        media["schema"],
                        resolve(doc, example)["value"],
                    )


def test_every_example_of_a_body_matches_its_schema() -> None:
    doc = document()
    checked = 0
    for where, schema, value in media_examples(doc):
        validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
        errors = [error.message for error in validator.iter_errors(value)]
        assert errors == [], where
        checked += 1
    assert checked >= 30


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its local ``$ref`` points at."""
    while "$ref" in node and len(node) == 1:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node
