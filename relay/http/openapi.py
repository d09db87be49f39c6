"""``GET /openapi.json`` (PROTOCOL.md §6): the OpenAPI 3.1 document of every HTTP endpoint.

The document is ``docs/openapi.json`` in the repository. The package carries a byte-identical copy,
``relay/http/openapi.json`` (:data:`DOCUMENT_PATH`), because the wheel is built from ``relay/`` and
``schema/`` only (the Containerfile copies nothing else): ``tests/http/test_openapi.py`` fails when
the two differ, or when the app has a route or a method the document does not list, or the other way
round. Edit ``docs/openapi.json`` and copy it over.

The answer is the file's bytes as they are (2-space indented JSON, UTF-8), read once, with
``Content-Type: application/json``. Like every endpoint it refuses query parameters
(``400 bad_request``, path ``$.query.<name>``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from quart import Blueprint, Response

from relay.http.errors import check_query

__all__ = ["DOCUMENT_PATH", "blueprint", "document_bytes"]

#: The packaged copy of ``docs/openapi.json``.
DOCUMENT_PATH = Path(__file__).resolve().with_name("openapi.json")

blueprint = Blueprint("openapi", __name__)


@functools.cache
def document_bytes() -> bytes:
    """The document as served: the bytes of :data:`DOCUMENT_PATH`, read on first use."""
    return DOCUMENT_PATH.read_bytes()


@blueprint.get("/openapi.json")
async def openapi_document() -> Response:
    check_query()
    return Response(document_bytes(), status=200, mimetype="application/json")
