/**
 * The hashes of checkpoint spec sections 3 to 7: run key, commitments, step hash, head chain,
 * leaves, and the registry's event topics.
 */

import { StandardMerkleTree, SimpleMerkleTree } from "@openzeppelin/merkle-tree";
import { bytesToHex, concat, hexToBytes, keccak256, toEventSelector, type Hex } from "viem";

import type { Json } from "./json.js";
import { lce, obj } from "./lce.js";

export const HEX32 = /^0x[0-9a-f]{64}$/;
export const ADDRESS = /^0x[0-9a-fA-F]{40}$/;

export const KINDS_V1 = ["llm", "chain", "activity", "signal", "update", "timer", "compensation"];
export const KINDS_V2 = [...KINDS_V1, "outcome"];

/** Registry v2 events (section 7.1), topic0 derived from the signature text. */
export const EVENTS = {
  Checkpointed: "Checkpointed(bytes32,uint64,bytes32,bytes32)",
  RootAnchored: "RootAnchored(bytes32,uint32)",
  RunSealed: "RunSealed(bytes32,uint64,bytes32)",
} as const;

export const TOPIC: Record<keyof typeof EVENTS, Hex> = {
  Checkpointed: toEventSelector(EVENTS.Checkpointed),
  RootAnchored: toEventSelector(EVENTS.RootAnchored),
  RunSealed: toEventSelector(EVENTS.RunSealed),
};

export function keccak(data: Uint8Array): Uint8Array {
  return keccak256(data, "bytes");
}

export function hex(data: Uint8Array): Hex {
  return bytesToHex(data);
}

export function bytes(h: string): Uint8Array {
  return hexToBytes(h as Hex);
}

/** `uint256(n)` as a hex32 topic or data word. */
export function uint256(n: bigint | number): Hex {
  return `0x${BigInt(n).toString(16).padStart(64, "0")}`;
}

/** Compare hashes or addresses as the spec says: case-insensitively. */
export function sameHex(a: string | null | undefined, b: string | null | undefined): boolean {
  return typeof a === "string" && typeof b === "string" && a.toLowerCase() === b.toLowerCase();
}

/** Section 3: `keccak256(LCE({"spec": v, "workflow_id": W, "run_id": R}))`. */
export function runKey(spec: 1 | 2, workflowId: string, runId: string): Uint8Array {
  return keccak(lce(obj({ spec: BigInt(spec), workflow_id: workflowId, run_id: runId })));
}

/** Section 4: `keccak256(salt || P)` (version 2) or `keccak256(P)` (version 1, salt null). */
export function commitment(salt: Uint8Array | null, preimage: Uint8Array): Uint8Array {
  return keccak(salt === null ? preimage : concat([salt, preimage]));
}

/** Section 5.1: `keccak256(LCE(record))` of the record exactly as given. */
export function stepHash(record: Json): Uint8Array {
  return keccak(lce(record));
}

/** Section 6: `head_(s+1) = keccak256(head_s || step_hash)`. */
export function nextHead(head: Uint8Array, step: Uint8Array): Uint8Array {
  return keccak(concat([head, step]));
}

/** Section 7.3 (version 2): `keccak256(keccak256(step_hash))`. */
export function leafV2(step: Uint8Array): Uint8Array {
  return keccak(keccak(step));
}

/** Section 12 (version 1): `keccak256(0x00 || step_hash)`. */
export function leafV1(step: Uint8Array): Uint8Array {
  return keccak(concat([new Uint8Array([0]), step]));
}

/**
 * Whether `proof` folds the step's leaf into `root` (OpenZeppelin's `processProof` with the
 * commutative node hash). Version 2 asks `@openzeppelin/merkle-tree`'s StandardMerkleTree with the
 * leaf encoding `["bytes32"]`, which double-hashes the step hash itself; version 1 computes its
 * own leaf and folds it with the same library's SimpleMerkleTree (whose leaves are taken as
 * given).
 */
export function proofReachesRoot(spec: 1 | 2, step: Uint8Array, proof: string[], root: string): boolean {
  if (spec === 2) return StandardMerkleTree.verify(root, ["bytes32"], [hex(step)], proof);
  return SimpleMerkleTree.verify(root, hex(leafV1(step)), proof);
}
