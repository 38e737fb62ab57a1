/**
 * Trust roots (spec section 9.4): from the caller only, never from the bundle.
 */

import { readFileSync } from "node:fs";

import { Json, JsonObject, parseJson } from "./json.js";
import { ADDRESS } from "./spec.js";
import type { TrustRoot } from "./verify.js";

export class TrustError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TrustError";
  }
}

function safeInt(v: Json | undefined, what: string, min: number): number {
  if (typeof v !== "bigint" || v < BigInt(min) || v >= 2n ** 53n)
    throw new TrustError(`${what} is not an integer >= ${min}`);
  return Number(v);
}

function address(v: Json | undefined, what: string): string {
  if (typeof v !== "string" || !ADDRESS.test(v)) throw new TrustError(`${what} is not an address`);
  return v;
}

/**
 * A deployments file (what `ledgerflow deploy` writes): `chain_id`, `block_number` and
 * `contracts` (name -> address, `CheckpointRegistry` among them).
 */
export function trustFromDeployments(path: string): TrustRoot {
  let json: Json;
  try {
    json = parseJson(readFileSync(path, "utf8"), { allowFractions: true });
  } catch (e) {
    throw new TrustError(`cannot read the deployments file ${path}: ${(e as Error).message}`);
  }
  if (!(json instanceof JsonObject)) throw new TrustError(`the deployments file ${path} is not an object`);
  const contracts = json.get("contracts");
  if (!(contracts instanceof JsonObject)) throw new TrustError(`the deployments file ${path} has no contracts`);
  const all = contracts.keys().map((name) => address(contracts.get(name), `contracts.${name}`));
  return {
    chain_id: safeInt(json.get("chain_id"), "chain_id", 1),
    registry: address(contracts.get("CheckpointRegistry"), "contracts.CheckpointRegistry"),
    from_block: BigInt(safeInt(json.get("block_number"), "block_number", 0)),
    contracts: all,
    source: "deployments",
  };
}

/** Explicit values: `--registry`, `--chain-id`, optionally `--from-block` and `--contract`s. */
export function explicitTrust(
  registry: string,
  chainId: string,
  fromBlock: string | undefined,
  contracts: string[],
): TrustRoot {
  if (!ADDRESS.test(registry)) throw new TrustError(`--registry ${registry} is not an address`);
  if (!/^[1-9][0-9]*$/.test(chainId) || BigInt(chainId) >= 2n ** 53n)
    throw new TrustError(`--chain-id ${chainId} is not a positive integer`);
  if (fromBlock !== undefined && !/^(0|[1-9][0-9]*)$/.test(fromBlock))
    throw new TrustError(`--from-block ${fromBlock} is not a block number`);
  for (const c of contracts) if (!ADDRESS.test(c)) throw new TrustError(`--contract ${c} is not an address`);
  return {
    chain_id: Number(chainId),
    registry,
    from_block: BigInt(fromBlock ?? "0"),
    contracts: contracts.length > 0 ? contracts : null,
    source: "explicit",
  };
}

/** A trust root written as JSON (`{"chain_id", "registry", "from_block", "contracts"}`, the
 * conformance manifest's form; `contracts` null or absent means unknown). */
export function trustFromJson(v: Json | undefined, what: string): TrustRoot {
  if (!(v instanceof JsonObject)) throw new TrustError(`${what}: the trust root is not an object`);
  const contracts = v.get("contracts");
  let list: string[] | null = null;
  if (Array.isArray(contracts)) list = contracts.map((c, k) => address(c, `${what}: contracts[${k}]`));
  else if (contracts !== null && contracts !== undefined) throw new TrustError(`${what}: contracts is not a list`);
  const from = v.get("from_block");
  return {
    chain_id: safeInt(v.get("chain_id"), `${what}: chain_id`, 1),
    registry: address(v.get("registry"), `${what}: registry`),
    from_block: BigInt(from === undefined ? 0 : safeInt(from, `${what}: from_block`, 0)),
    contracts: list,
    source: v.get("source") === "deployments" ? "deployments" : "explicit",
  };
}
