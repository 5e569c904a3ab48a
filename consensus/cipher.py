"""Encryption at rest (and in transit) of everything the application replicates.

The driver seals each proposal before it enters the log and each state-machine
snapshot before it is stored, so the log files, the snapshot files and the
messages carrying them hold only ciphertext; the core never reads that data.
AES-256-GCM with a fresh 96-bit nonce per message; the key comes from
configuration or the environment and never travels through the log.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


class DecryptionError(ValueError):
    pass


class Cipher:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError(
                f"an encryption key is 32 bytes (base64: 44 characters); got {len(key)} bytes"
            )
        self._aead = AESGCM(key)

    @classmethod
    def from_base64(cls, text: str) -> Cipher:
        try:
            key = base64.b64decode(text, validate=True)
        except ValueError:
            raise ValueError(
                "the encryption key is not valid base64; generate one with `ragraft keys`"
            ) from None
        return cls(key)

    @staticmethod
    def generate_key() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, None)

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], None)
        except (InvalidTag, ValueError):
            raise DecryptionError(
                "cannot decrypt replicated data: this node's encryption key differs from the one "
                "the data was written with (check [security] encryption_key / "
                "RAGRAFT_ENCRYPTION_KEY)"
            ) from None
