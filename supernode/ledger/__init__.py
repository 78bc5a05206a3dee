"""The SQLite ledger: tables, engine and repositories. No HTTP, chain or transport here."""
