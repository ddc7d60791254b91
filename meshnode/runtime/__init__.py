"""The trio runtime: drives the sans-IO core with a real clock, SQLite, engines and HTTP."""
