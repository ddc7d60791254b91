"""The `meshnode` command: a thin client that must start fast (no libp2p, no wasmtime)."""
