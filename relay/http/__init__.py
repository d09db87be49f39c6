"""The HTTP API of PROTOCOL.md §6, as Quart blueprints, and its error edge (:mod:`relay.http.errors`)."""
