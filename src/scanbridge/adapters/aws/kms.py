"""SecretBox on KMS: the task JWT is stored only as KMS ciphertext bound to its task_id."""

from __future__ import annotations

import base64
from typing import Any


class KmsSecretBox:
    """Encrypt/decrypt with one KMS key and an encryption context."""

    def __init__(self, client: Any, key_id: str) -> None:
        self._kms = client
        self._key_id = key_id

    def encrypt(self, plaintext: str, context: dict[str, str]) -> str:
        """Base64 KMS ciphertext."""
        out = self._kms.encrypt(KeyId=self._key_id, Plaintext=plaintext.encode(), EncryptionContext=context)
        return base64.b64encode(out["CiphertextBlob"]).decode()

    def decrypt(self, ciphertext: str, context: dict[str, str]) -> str:
        """The plaintext; KMS refuses a different context."""
        out = self._kms.decrypt(CiphertextBlob=base64.b64decode(ciphertext), EncryptionContext=context)
        return bytes(out["Plaintext"]).decode()
