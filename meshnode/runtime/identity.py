"""The node's persistent identity: an Ed25519 key in the data directory.

The node id is the key's libp2p peer id (`12D3KooW…`): the multihash of the protobuf-encoded
public key, in base58btc, exactly as libp2p computes it, so the id stays the same when the
node joins the mesh on a libp2p host built from this key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import base58
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from meshnode.errors import MeshnodeError

__all__ = ["IDENTITY_FILE", "Identity", "load_or_create_identity", "peer_id_of"]

IDENTITY_FILE: Final = "identity.key"
_SEED_BYTES: Final = 32
# libp2p's PublicKey protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_ED25519_PUBLIC_KEY_PREFIX: Final = bytes([0x08, 0x01, 0x12, 0x20])
# Multihash "identity" (0x00): keys of 42 bytes or less are inlined, not hashed.
_IDENTITY_MULTIHASH: Final = 0x00


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    peer_id: str

    @property
    def seed(self) -> bytes:
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def peer_id_of(private_key: Ed25519PrivateKey) -> str:
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    encoded = _ED25519_PUBLIC_KEY_PREFIX + public
    multihash = bytes([_IDENTITY_MULTIHASH, len(encoded)]) + encoded
    return base58.b58encode(multihash).decode()


def load_or_create_identity(data_dir: Path) -> Identity:
    """Read the key, or create it (readable by the owner only) on first start."""
    path = data_dir / IDENTITY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != _SEED_BYTES:
            raise MeshnodeError(
                f"{path} is not a meshnode identity ({len(seed)} bytes, expected {_SEED_BYTES}); "
                "move it away to create a new identity"
            )
        key = Ed25519PrivateKey.from_private_bytes(seed)
    else:
        key = Ed25519PrivateKey.generate()
        identity = Identity(key, peer_id_of(key))
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(identity.seed)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
    return Identity(key, peer_id_of(key))
