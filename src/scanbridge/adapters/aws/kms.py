"""SecretBox on KMS, by envelope encryption: the task JWT is sealed locally with AES-256-GCM under a data
key that KMS generated, and the stored ciphertext carries that data key as KMS wrapped it.

Encrypting costs no KMS call while the process's current data key is fresh (one GenerateDataKey per
`key_max_age_s` or `key_max_uses`, whichever comes first), so the webhook acknowledgement no longer waits
on KMS. Decrypting needs kms:Decrypt on the key, so any process with that permission (the results
Lambda, the local launcher's results step) opens what any other sealed; unwrapped data keys are kept
for the same bounded time. The task context (`{"task_id": ...}`) is bound as the AES-GCM associated
data: a ciphertext opens only with the context it was sealed with. Data keys are wrapped under the
constant KMS encryption context DATA_KEY_CONTEXT.

Stored form: `kms1.<wrapped data key>.<nonce + sealed text + tag>`, both parts URL-safe base64. Text
without the prefix is the earlier form (the plaintext encrypted by KMS itself under the task context),
still decrypted.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

PREFIX = "kms1."
#: the KMS encryption context every data key is generated and unwrapped under
DATA_KEY_CONTEXT = {"purpose": "scanbridge-secret-box"}
NONCE_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aad(context: dict[str, str]) -> bytes:
    """The associated data: the format and the context, canonical JSON."""
    return PREFIX.encode() + json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


class KmsSecretBox:
    """Envelope encryption under one KMS key, bound to an encryption context.

    >>> box = KmsSecretBox(boto3.client("kms"), "alias/scanbridge")
    >>> box.decrypt(box.encrypt("eyJ...", {"task_id": "t1"}), {"task_id": "t1"})  # 'eyJ...'
    """

    def __init__(self, client: Any, key_id: str, *, key_max_age_s: float = 300.0, key_max_uses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kms = client
        self._key_id = key_id
        self._max_age = key_max_age_s
        self._max_uses = max(1, key_max_uses)
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[bytes, bytes, float] | None = None  # (data key, wrapped, born)
        self._uses = 0
        self._unwrapped: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # wrapped -> (key, born)

    def encrypt(self, plaintext: str, context: dict[str, str]) -> str:
        """`kms1.` text: the data key as KMS wrapped it, then nonce + AES-256-GCM of `plaintext`."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # not at import: the API's cold start

        key, wrapped = self._data_key()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), _aad(context))
        return f"{PREFIX}{_b64(wrapped)}.{_b64(nonce + sealed)}"

    def decrypt(self, ciphertext: str, context: dict[str, str]) -> str:
        """The plaintext; ValueError (or KMS's error, for the earlier form) when `context` differs."""
        if not ciphertext.startswith(PREFIX):
            out = self._kms.decrypt(CiphertextBlob=base64.b64decode(ciphertext), EncryptionContext=context)
            return bytes(out["Plaintext"]).decode()
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            wrapped_text, sealed_text = ciphertext[len(PREFIX):].split(".")
            wrapped, sealed = _unb64(wrapped_text), _unb64(sealed_text)
        except ValueError as exc:
            raise ValueError("not a scanbridge ciphertext") from exc
        try:
            plain = AESGCM(self._unwrap(wrapped)).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(context))
        except InvalidTag as exc:
            raise ValueError("the ciphertext does not open with this encryption context") from exc
        return plain.decode()

    def _data_key(self) -> tuple[bytes, bytes]:
        """The current data key and its wrapped form; a new one from KMS when it is too old or too used."""
        with self._lock:
            now = self._clock()
            current = self._current
            if current is None or now - current[2] >= self._max_age or self._uses >= self._max_uses:
                out = self._kms.generate_data_key(KeyId=self._key_id, KeySpec="AES_256",
                                                  EncryptionContext=DATA_KEY_CONTEXT)
                current = (bytes(out["Plaintext"]), bytes(out["CiphertextBlob"]), now)
                self._current, self._uses = current, 0
                self._remember(current[1], current[0], now)
            self._uses += 1
            return current[0], current[1]

    def _unwrap(self, wrapped: bytes) -> bytes:
        """The data key of `wrapped`: from this process's recent keys, else from KMS."""
        now = self._clock()
        with self._lock:
            hit = self._unwrapped.get(wrapped)
            if hit is not None and now - hit[1] < self._max_age:
                return hit[0]
        out = self._kms.decrypt(CiphertextBlob=wrapped, EncryptionContext=DATA_KEY_CONTEXT)
        key = bytes(out["Plaintext"])
        with self._lock:
            self._remember(wrapped, key, now)
        return key

    def _remember(self, wrapped: bytes, key: bytes, born: float, keep: int = 64) -> None:
        """Keep an unwrapped key for `key_max_age_s` (at most `keep` of them). Call with the lock held."""
        self._unwrapped[wrapped] = (key, born)
        self._unwrapped.move_to_end(wrapped)
        while len(self._unwrapped) > keep:
            self._unwrapped.popitem(last=False)
