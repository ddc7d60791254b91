"""The sans-IO protocol core: events and the time in, commands out.

Rules of this package (enforced by tests/test_import_rules.py): it imports only
`meshnode.spec`, `meshnode.errors`, msgspec and pure standard-library modules. No trio,
libp2p, docker, wasmtime, sqlite, sockets, logging handlers, clock or global RNG: the runtime
and the simulator drive the very same code. Membership, requester election, bidding, the
per-type schedulers and the execution lifecycle land here with the node and mesh milestones.
"""
