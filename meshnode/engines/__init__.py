"""Executors that run one task: `wasm` (embedded, wasmtime) and `docker` (Docker Engine API).

Every engine implements `meshnode.engines.base.Engine`; the runtime prepares inputs, output
folders and log files, and the engine only runs the task within its limits.
"""
