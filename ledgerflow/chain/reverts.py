"""Decoding revert data into :class:`ContractRevert` with the custom error's name and values."""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from web3.exceptions import ContractLogicError

from ledgerflow.chain.artifacts import artifact_names, load_artifact
from ledgerflow.checkpoint.canonical import keccak
from ledgerflow.errors import ContractRevert

__all__ = ["decode_revert", "revert_from_exception"]

_BUILTIN = {
    bytes.fromhex("08c379a0"): ("Error", ["message"], ["string"]),
    bytes.fromhex("4e487b71"): ("Panic", ["code"], ["uint256"]),
}


def _type_of(inp: dict[str, Any]) -> str:
    t = str(inp["type"])
    if t.startswith("tuple"):
        inner = ",".join(_type_of(c) for c in inp.get("components", []))
        return f"({inner}){t[5:]}"
    return t


@cache
def _selectors() -> dict[bytes, tuple[str, list[str], list[str]]]:
    table = dict(_BUILTIN)
    for name in artifact_names():
        for entry in load_artifact(name).errors():
            types = [_type_of(i) for i in entry.get("inputs", [])]
            names = [i.get("name") or f"arg{n}" for n, i in enumerate(entry.get("inputs", []))]
            sig = f"{entry['name']}({','.join(types)})"
            table[keccak(sig.encode())[:4]] = (entry["name"], names, types)
    return table


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def decode_revert(data: bytes | str | None, *, contract: str = "") -> ContractRevert:
    """Turn raw revert data into a ContractRevert naming the custom error and its arguments."""
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x")) if data else b""
    data = data or b""
    if len(data) < 4:
        return ContractRevert("Reverted", {}, contract=contract)
    known = _selectors().get(data[:4])
    if known is None:
        return ContractRevert(
            "UnknownError", {"selector": "0x" + data[:4].hex()}, contract=contract
        )
    name, names, types = known
    try:
        values = abi_decode(types, data[4:])
    except Exception:
        return ContractRevert(name, {}, contract=contract)
    return ContractRevert(
        name, dict(zip(names, map(_plain, values), strict=True)), contract=contract
    )


def revert_from_exception(exc: ContractLogicError, *, contract: str = "") -> ContractRevert:
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    return decode_revert(data if isinstance(data, str | bytes) else None, contract=contract)
