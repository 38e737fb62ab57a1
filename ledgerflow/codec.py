"""Encrypted history: a Temporal payload codec (AES-256-GCM) with keys outside history.

With ``LEDGERFLOW_CODEC_KEYS`` set, every payload a ledgerflow client or worker sends to Temporal
(workflow inputs and results, activity arguments and results, signals, updates, queries, memos,
and failure messages and stack traces) is encrypted before it leaves the process, so Temporal's
history holds no amount, address or model rationale in plaintext. Unset, nothing changes.

Keys. ``LEDGERFLOW_CODEC_KEYS`` is ``id:base64key[,id:base64key...]``: each key is 32 random
bytes (AES-256) in base64, each id a short public name (``2026-12``) that is written, in clear,
in the metadata of every payload it encrypted. The first key encrypts; every listed key
decrypts. Rotating is adding a new key in front and keeping the old ones for as long as histories
written under them are kept (a run's history is read again on every replay). Keys never enter
history, logs or errors: only ids do.

Wire format of one encrypted payload (the metadata names follow Temporal's encryption samples;
the bytes are ledgerflow's own, so only ledgerflow's codec, or its codec server, reads them)::

    metadata: encoding = "binary/encrypted"
              encryption-key-id = <id>
              encryption-cipher = "AES256-GCM/1"
    data:     nonce (12 random bytes) || ciphertext || tag (16 bytes)

The plaintext is the original ``Payload`` message serialized (its own metadata included), and
the associated data binds the cipher name and the key id, so a payload cannot be relabelled with
another id. Decoding leaves payloads that are not encrypted as they are: histories written before
the codec was turned on stay readable, and so do recorded test histories.

pycryptodome (already the checkpoint core's Keccak) provides AES-GCM; the ``cryptography``
package is not used because it would bring cffi, which moves pycryptodome off the ctypes backend
the checkpoint core's fast Keccak path needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

from Crypto.Cipher import AES
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from ledgerflow.errors import CodecError, ConfigError, UnknownCodecKey
from ledgerflow.settings import CODEC_KEY_BYTES, CODEC_KEY_ID, Settings, parse_codec_keys

__all__ = [
    "CIPHER",
    "ENCODING",
    "KEY_ID_KEY",
    "EncryptionCodec",
    "codec_from_settings",
    "converter_for",
    "is_encrypted",
    "parse_keys",
]

#: ``encoding`` of an encrypted payload.
ENCODING = b"binary/encrypted"
#: metadata key naming the key (its id) that encrypted a payload.
KEY_ID_KEY = "encryption-key-id"
#: metadata key naming the cipher and this format's version.
CIPHER_KEY = "encryption-cipher"
CIPHER = b"AES256-GCM/1"

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = CODEC_KEY_BYTES
#: ``id:base64key,...`` → ``{id: key}`` in order (:func:`ledgerflow.settings.parse_codec_keys`).
parse_keys = parse_codec_keys


def is_encrypted(payload: Payload) -> bool:
    """Whether ``payload`` was encrypted by this codec."""
    return payload.metadata.get("encoding") == ENCODING


def _aad(key_id: bytes) -> bytes:
    return b"ledgerflow-codec\x00" + CIPHER + b"\x00" + key_id


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM payload codec; the first key encrypts, every key decrypts (by key id).

    Args:
        keys: ``{key id: 32-byte key}``, the encrypting key first.

    Raises:
        ConfigError: no key, or a key or id that :func:`parse_keys` would refuse.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ConfigError("an encryption codec needs at least one key")
        for key_id, key in keys.items():
            if not CODEC_KEY_ID.match(key_id) or len(key) != KEY_BYTES:
                raise ConfigError(f"codec key {key_id!r}: the id or the key length is invalid")
        self._keys = {k.encode(): bytes(v) for k, v in keys.items()}
        self._primary = next(iter(self._keys))

    @property
    def key_id(self) -> str:
        """The id of the key that encrypts."""
        return self._primary.decode()

    @property
    def key_ids(self) -> list[str]:
        """Every key id that decrypts, the encrypting one first."""
        return [k.decode() for k in self._keys]

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        """``payload`` encrypted under the first key."""
        nonce = os.urandom(NONCE_BYTES)
        cipher = AES.new(self._keys[self._primary], AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)
        cipher.update(_aad(self._primary))
        ciphertext, tag = cipher.encrypt_and_digest(payload.SerializeToString())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_KEY: self._primary, CIPHER_KEY: CIPHER},
            data=nonce + ciphertext + tag,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload; one that is not encrypted is returned as it is.

        Raises:
            UnknownCodecKey: it was encrypted under a key id that is not configured.
            CodecError: it names another cipher, is truncated, or fails authentication.
        """
        if not is_encrypted(payload):
            return payload
        key_id = payload.metadata.get(KEY_ID_KEY, b"")
        shown = key_id.decode("utf-8", "replace")[:64]
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownCodecKey(shown, self.key_ids)
        cipher_name = payload.metadata.get(CIPHER_KEY, CIPHER)
        if cipher_name != CIPHER:
            raise CodecError(
                f"payload under codec key id {shown!r} names cipher "
                f"{cipher_name.decode('utf-8', 'replace')[:32]!r}; this version reads "
                f"{CIPHER.decode()}"
            )
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise CodecError(f"payload under codec key id {shown!r} is truncated")
        nonce, body, tag = data[:NONCE_BYTES], data[NONCE_BYTES:-TAG_BYTES], data[-TAG_BYTES:]
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_BYTES)
        cipher.update(_aad(key_id))
        try:
            plaintext = cipher.decrypt_and_verify(body, tag)
        except ValueError:
            raise CodecError(
                f"payload under codec key id {shown!r} fails authentication: it was altered, "
                "or the key configured under that id is not the one that encrypted it"
            ) from None
        return Payload.FromString(plaintext)


def codec_from_settings(settings: Settings) -> EncryptionCodec | None:
    """The codec ``settings`` configure, or None when encrypted history is off."""
    if settings.codec_keys is None:
        return None
    return EncryptionCodec(parse_keys(settings.codec_keys.get_secret_value()))


def converter_for(settings: Settings, base: DataConverter | None = None) -> DataConverter:
    """The data converter of a process with ``settings``: ``base`` (default: ledgerflow's
    :data:`ledgerflow.converter.data_converter`) plus the encryption codec when it is on.

    With the codec on, failure messages and stack traces are encoded too (Temporal's
    ``DefaultFailureConverterWithEncodedAttributes``), since they can quote inputs.
    """
    if base is None:
        from ledgerflow.converter import data_converter

        base = data_converter
    codec = codec_from_settings(settings)
    if codec is None:
        return base
    return dataclasses.replace(
        base,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
