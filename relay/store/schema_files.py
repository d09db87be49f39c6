"""Where the numbered SQL migrations are: inside the installed package, or in the source tree.

A wheel carries ``schema/`` as ``relay/_schema/`` (``[tool.hatch.build.targets.wheel.force-include]``
in pyproject.toml); a checkout (editable install, tests) reads ``schema/`` at the root of the tree.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["migrations_dir"]

_PACKAGED = Path(__file__).resolve().parents[1] / "_schema"
_SOURCE = Path(__file__).resolve().parents[2] / "schema"


def migrations_dir(dialect: str) -> Path:
    """The directory of ``dialect``'s migrations (``sqlite``, ``postgres``)."""
    packaged = _PACKAGED / dialect
    return packaged if packaged.is_dir() else _SOURCE / dialect
