"""The SQLite ledger: tables, engine and repositories. No HTTP, chain or transport here."""

# The largest integer a ledger column holds (SQLite INTEGER is a signed 64-bit value).
# Every integer that comes from outside and is stored is checked against it at the edge.
MAX_INTEGER = (1 << 63) - 1
