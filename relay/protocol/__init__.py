"""The sans-I/O core of the relay protocol (PROTOCOL.md §1, §4).

Messages, the codec, validation, the handshake state machine and replay continuation tokens. This
package performs no I/O and imports no trio, Quart, Hypercorn, psycopg, redis or sqlite3; from the rest
of relay it uses only the pure leaf modules :mod:`relay.errors` and :mod:`relay.crypto`
(``tests/unit/test_purity.py`` enforces both).
"""
