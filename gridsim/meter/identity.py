"""Meter identity keys (Ed25519) for signing updates and ledger contributions.

In simulation a meter's key is derived from the run's ``--seed`` and its id, so
a restarted meter process keeps its identity and runs repeat exactly; anyone who
knows the seed can derive it too, which is fine for a simulator and not for a
deployment, where keys are provisioned per device.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

IDENTITY_DOMAIN = b"gridsim/meter-identity/v1\x00"


def meter_signing_key(seed: int, meter: int) -> Ed25519PrivateKey:
    material = (
        IDENTITY_DOMAIN + seed.to_bytes(16, "little", signed=True) + meter.to_bytes(8, "little")
    )
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(material).digest())


def raw_public_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
