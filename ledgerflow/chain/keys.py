"""Who signs a transaction: a local key, or a remote signer that keeps the key in an HSM or KMS.

Both produce the signed raw bytes that the :class:`~ledgerflow.chain.signer.Signer` persists
before broadcasting; neither ever logs or raises with a key or a raw transaction in it.

- :class:`LocalKey` signs in-process (secp256k1 in C through coincurve).
- :class:`RemoteSigner` asks a JSON-RPC signer: ``eth_signTransaction`` (Web3Signer's
  "eth1" mode, geth-style signers) or ``account_signTransaction`` (Clef). Either may answer the
  raw transaction as a hex string or as ``{"raw": ..., "tx": ...}``. The answer is not trusted:
  it is decoded, and its sender, chain id, nonce, recipient, value, data, gas and fees must be
  exactly what was asked, or nothing is persisted or broadcast.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple, Protocol

import httpx
from eth_account import Account
from eth_keys.datatypes import PrivateKey
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes

from ledgerflow import jsonsafe
from ledgerflow.errors import ConfigError, SignerUnavailable, bounded
from ledgerflow.log import redact_url, register_secret

__all__ = ["LocalKey", "RemoteSigner", "SignedTx", "TxSigner"]

#: The fields ledgerflow puts in every transaction (EIP-1559, type 2), and so checks.
_CHECKED = (
    "chainId",
    "nonce",
    "to",
    "value",
    "data",
    "gas",
    "maxFeePerGas",
    "maxPriorityFeePerGas",
)


class SignedTx(NamedTuple):
    raw: str  # 0x-hex of the signed transaction
    tx_hash: str  # 0x-hex keccak of the raw bytes


class TxSigner(Protocol):
    """Signs EIP-1559 transactions for one address."""

    address: ChecksumAddress
    #: whether :meth:`sign` must go over the network (then :meth:`sign_now` is unavailable)
    remote: bool

    def sign_now(self, tx: dict[str, Any]) -> SignedTx:
        """Sign in-process (local keys only)."""
        ...

    async def sign(self, tx: dict[str, Any]) -> SignedTx:
        """Sign ``tx`` (a dict with the fields of :data:`_CHECKED`)."""
        ...


class LocalKey:
    """A private key held by this process."""

    remote = False

    def __init__(self, private_key: str, *, role: str = "signer") -> None:
        register_secret(private_key)
        try:
            account = Account.from_key(private_key)
        except (ValueError, TypeError):
            raise ConfigError(f"the {role} key is not a valid secp256k1 private key") from None
        # Parsed once: signing with the key object skips re-deriving the public key every time.
        self._key = PrivateKey(bytes(account.key))
        self.address: ChecksumAddress = account.address

    def __repr__(self) -> str:  # never show the key
        return f"LocalKey({self.address})"

    def sign_now(self, tx: dict[str, Any]) -> SignedTx:
        signed = Account.sign_transaction(tx, self._key)
        return SignedTx("0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex())

    async def sign(self, tx: dict[str, Any]) -> SignedTx:
        return self.sign_now(tx)


def _quantity(value: int) -> str:
    return hex(int(value))


def decode_signed(raw: str) -> tuple[dict[str, Any], ChecksumAddress]:
    """The fields and the recovered sender of a signed EIP-1559 transaction."""
    data = HexBytes(raw)
    if not data or data[0] != 2:
        raise ValueError("not an EIP-1559 (type 2) transaction")
    from eth_account.typed_transactions import TypedTransaction

    fields = TypedTransaction.from_bytes(data).as_dict()
    sender = Account.recover_transaction(data)
    return dict(fields), to_checksum_address(sender)


class RemoteSigner:
    """Signs through a JSON-RPC signer; the key never enters this process.

    Args:
        url: the signer's JSON-RPC endpoint (user-info for basic auth is allowed; it is never
            logged).
        address: the account it signs for.
        method: ``eth_signTransaction`` or ``account_signTransaction``.
        timeout: seconds per signing request.
    """

    remote = True

    def __init__(
        self,
        url: str,
        address: str,
        *,
        method: str = "eth_signTransaction",
        timeout: float = 10.0,
        role: str = "signer",
    ) -> None:
        register_secret(url)
        try:
            self.address = to_checksum_address(address)
        except ValueError:
            raise ConfigError(f"the {role} address {address!r} is not an address") from None
        self.url = url
        self.label = redact_url(url)
        self.method = method
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"RemoteSigner({self.address} via {self.label})"

    def sign_now(self, tx: dict[str, Any]) -> SignedTx:
        raise TypeError("a remote signer signs asynchronously")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def sign(self, tx: dict[str, Any]) -> SignedTx:
        request = {
            "from": self.address,
            "to": tx["to"],
            "value": _quantity(tx["value"]),
            "data": tx["data"],
            "gas": _quantity(tx["gas"]),
            "nonce": _quantity(tx["nonce"]),
            "chainId": _quantity(tx["chainId"]),
            "type": "0x2",
            "maxFeePerGas": _quantity(tx["maxFeePerGas"]),
            "maxPriorityFeePerGas": _quantity(tx["maxPriorityFeePerGas"]),
        }
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": self.method, "params": [request]}
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        what = f"the remote signer at {self.label}"
        try:
            resp = await self._client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise SignerUnavailable(f"{what} did not answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise SignerUnavailable(f"{what} is unreachable ({type(exc).__name__})") from None
        if resp.status_code != 200:
            raise SignerUnavailable(f"{what} answered HTTP {resp.status_code}")
        try:
            answer = jsonsafe.loads(resp.content, max_bytes=1024 * 1024, what="answer")
        except jsonsafe.UnsafeJSON:
            raise SignerUnavailable(f"{what} did not answer JSON-RPC") from None
        if not isinstance(answer, dict):
            raise SignerUnavailable(f"{what} did not answer JSON-RPC")
        if answer.get("error"):
            err = answer["error"]
            message = err.get("message", "") if isinstance(err, dict) else str(err)
            raise SignerUnavailable(bounded(f"{what} refused to sign: {message}", 200))
        result = answer.get("result")
        raw = result.get("raw") if isinstance(result, dict) else result
        if not isinstance(raw, str):
            raise SignerUnavailable(f"{what} answered without a signed transaction")
        self._check(raw, tx, what)
        return SignedTx(
            "0x" + HexBytes(raw).hex().removeprefix("0x"), "0x" + keccak(HexBytes(raw)).hex()
        )

    def _check(self, raw: str, tx: dict[str, Any], what: str) -> None:
        """Refuse an answer that is not exactly the transaction asked for, signed by us."""
        try:
            fields, sender = decode_signed(raw)
        except Exception:
            raise SignerUnavailable(
                f"{what} answered bytes that are not a signed transaction"
            ) from None
        if sender != self.address:
            raise SignerUnavailable(f"{what} signed with {sender}, not {self.address}")
        for name in _CHECKED:
            want, got = tx[name], fields.get(name)
            if name == "to":
                same = got is not None and to_checksum_address(got) == to_checksum_address(want)
            elif name == "data":
                same = HexBytes(got or b"") == HexBytes(want)
            else:
                same = got is not None and int(got) == int(want)
            if not same:
                raise SignerUnavailable(f"{what} signed another transaction ({name} differs)")
