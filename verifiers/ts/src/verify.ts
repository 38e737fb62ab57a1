/**
 * The verification algorithm of checkpoint spec section 10, phases 1 to 5, over a well-formed
 * bundle (phase 0 is `parseBundle`). Every check runs and adds findings `(step, code, message)`;
 * the verdict is `ok = no findings`, `first_bad_step = min(step)`, and `sealed`.
 */

import { decodeAbiParameters } from "viem";

import type { Anchor, Bundle, StepEntry } from "./bundle.js";
import type { ChainLog, ChainReader, Receipt } from "./chain.js";
import { Json, JsonObject, isWellFormed } from "./json.js";
import { parseCanonical } from "./lce.js";
import {
  ADDRESS,
  HEX32,
  TOPIC,
  bytes,
  commitment,
  hex,
  nextHead,
  proofReachesRoot,
  runKey,
  sameHex,
  stepHash,
  uint256,
} from "./spec.js";

export interface TrustRoot {
  chain_id: number;
  registry: string;
  from_block: bigint;
  /** the trusted deployment's contracts, or null when unknown (explicit --registry/--chain-id) */
  contracts: string[] | null;
  source: "deployments" | "explicit";
}

export interface Finding {
  step: number;
  code: string;
  message: string;
}

export interface Report {
  workflow_id: string;
  run_id: string;
  workflow_type: string;
  anchor_mode: "batched" | "per-step";
  ok: boolean;
  sealed: boolean;
  first_bad_step: number | null;
  steps: number;
  head: string;
  spec_version: 1 | 2;
  registry: string;
  chain_id: number;
  contracts_source: "trust_root" | "bundle";
  anchors: Record<string, string | number>[];
  seal: { steps: number; head: string; tx_hash: string; block_number: number } | null;
  redacted: { step: number; parts: string[] }[];
  pending_steps: number;
  findings: Finding[];
  problems: string[];
  verifier: string;
}

export interface VerifyOptions {
  allowUnsealedV1?: boolean;
}

export const VERIFIER = "ledgerflow-verifier-ts 0.1.0";

/** A parsed TxResult (section 5.5). */
interface TxResult {
  tx_hash: string;
  block_number: bigint;
  block_hash: string;
  to: string;
  gas_used: bigint;
  event: { address: string; topics: string[]; log_index: bigint } | null;
}

function members(v: Json | undefined): JsonObject | null {
  return v instanceof JsonObject ? v : null;
}

function hasExactly(o: JsonObject, names: string[]): boolean {
  const keys = o.keys();
  return keys.length === names.length && names.every((n) => o.has(n));
}

/** `{"error": {"type": string, "message": string}}` and nothing else (section 5.3). */
function isErrorShape(v: Json): boolean {
  const o = members(v);
  if (o === null || !hasExactly(o, ["error"])) return false;
  const e = members(o.get("error"));
  return (
    e !== null &&
    hasExactly(e, ["type", "message"]) &&
    typeof e.get("type") === "string" &&
    typeof e.get("message") === "string"
  );
}

/** An object with exactly the given members, each a string (the outcome step's values). */
function isStringObject(v: Json, names: string[]): boolean {
  const o = members(v);
  return o !== null && hasExactly(o, names) && names.every((n) => typeof o.get(n) === "string");
}

const isHex32 = (v: Json | undefined): v is string => typeof v === "string" && HEX32.test(v);
const isAddress = (v: Json | undefined): v is string => typeof v === "string" && ADDRESS.test(v);
const isInt = (v: Json | undefined, min: bigint): v is bigint => typeof v === "bigint" && v >= min;

/** The TxResult shape of section 5.5, or null when `v` does not have it exactly. */
function asTxResult(v: Json): TxResult | null {
  const o = members(v);
  const names = ["tx_hash", "block_number", "block_hash", "to", "gas_used", "already_done", "event"];
  if (o === null || !hasExactly(o, names)) return null;
  const txHash = o.get("tx_hash");
  const blockNumber = o.get("block_number");
  const blockHash = o.get("block_hash");
  const to = o.get("to");
  const gasUsed = o.get("gas_used");
  if (!isHex32(txHash) || !isInt(blockNumber, 1n) || !isHex32(blockHash) || !isAddress(to) || !isInt(gasUsed, 0n)) {
    return null;
  }
  if (typeof o.get("already_done") !== "boolean") return null;
  const ev = o.get("event");
  let event: TxResult["event"] = null;
  if (ev !== null) {
    const e = members(ev);
    if (e === null || !hasExactly(e, ["address", "topics", "log_index"])) return null;
    const address = e.get("address");
    const topics = e.get("topics");
    const logIndex = e.get("log_index");
    if (!isAddress(address) || !isInt(logIndex, 0n) || !Array.isArray(topics)) return null;
    if (topics.length < 1 || topics.length > 4 || !topics.every(isHex32)) return null;
    event = { address, topics: topics as string[], log_index: logIndex };
  }
  return { tx_hash: txHash, block_number: blockNumber, block_hash: blockHash, to, gas_used: gasUsed, event };
}

function sameTopics(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((t, k) => sameHex(t, b[k]));
}

function decodeWords(log: ChainLog, types: readonly ("uint256" | "bytes32")[]): readonly unknown[] {
  return decodeAbiParameters(
    types.map((type) => ({ type })),
    log.data as `0x${string}`,
  );
}

/** Run phases 1 to 5 of section 10 on a well-formed bundle (`chain` null: an offline check). */
export async function verifyBundle(
  b: Bundle,
  trust: TrustRoot,
  chain: ChainReader | null,
  options: VerifyOptions = {},
): Promise<Report> {
  const findings: Finding[] = [];
  const add = (step: number, code: string, message: string): void => {
    findings.push({ step, code, message });
  };
  const M = b.steps.length;
  const spec = b.spec_version;
  const rk = hex(runKey(spec, b.workflow_id, b.run_id));

  // ---- phase 1: trust and chain
  if (b.run_key !== rk) add(0, "run_key", `the bundle's run_key ${b.run_key} is not the run key of its ids (${rk})`);
  if (!sameHex(b.registry, trust.registry)) {
    add(0, "untrusted_registry", `the bundle names registry ${b.registry}, the trusted registry is ${trust.registry}`);
  }
  if (b.chain_id !== trust.chain_id) {
    add(0, "untrusted_chain", `the bundle names chain ${b.chain_id}, the trusted chain is ${trust.chain_id}`);
  }
  // chain null: an offline check, which "behaves the same way" as a node of another chain (10.2)
  const nodeChain = chain === null ? null : await chain.chainId();
  const online = nodeChain === BigInt(trust.chain_id);
  if (nodeChain === null) add(0, "node_chain", "offline check: no node was asked, nothing on chain is verified");
  else if (!online)
    add(0, "node_chain", `the RPC node serves chain ${nodeChain}, the trusted chain is ${trust.chain_id}`);
  const latest = online && chain !== null ? await chain.blockNumber() : 0n;
  const node = chain as ChainReader; // only used when online
  const scan = (topics: string[]): Promise<ChainLog[]> => node.logs(trust.registry, topics, trust.from_block, latest);

  // ---- phase 2: records, commitments and the head chain
  const heads: Uint8Array[] = [bytes(rk)];
  const hashes: Uint8Array[] = [];
  const redacted: Report["redacted"] = [];
  const txResults = new Map<number, TxResult>();
  const utf8 = new TextEncoder();
  b.steps.forEach((st: StepEntry, i: number) => {
    const r = st.record;
    const h = heads[i] as Uint8Array;
    const sh = stepHash(r.raw);
    hashes.push(sh);
    if (r.seq !== i) add(i, "seq", `step ${i} has seq ${r.seq}`);
    if (r.run !== rk) add(i, "run", `step ${i} belongs to run ${r.run}, not ${rk}`);
    if (r.prev !== hex(h)) add(i, "prev", `step ${i}'s prev ${r.prev} is not the recomputed head ${hex(h)}`);
    heads.push(nextHead(h, sh));

    const values: { input?: Json; output?: Json } = {};
    const parts: string[] = [];
    for (const x of ["input", "output"] as const) {
      const part = st[x];
      if (part === null) {
        parts.push(x);
        continue;
      }
      if (!isWellFormed(part.preimage)) {
        add(i, "preimage", `step ${i}'s ${x} preimage has a lone surrogate (no UTF-8 encoding)`);
        continue;
      }
      const P = utf8.encode(part.preimage);
      const canonical = parseCanonical(part.preimage);
      if (canonical.ok) values[x] = canonical.value;
      else add(i, "preimage", `step ${i}'s ${x} preimage: ${canonical.reason}`);
      const c = commitment(part.salt === null ? null : bytes(part.salt), P);
      if (hex(c) !== r[x])
        add(i, "commitment", `step ${i}'s ${x} salt and preimage do not hash to its record's commitment`);
    }
    if (parts.length > 0) redacted.push({ step: i, parts });

    if (spec !== 2) return;
    if (r.status === "failed" && values.output !== undefined && !isErrorShape(values.output)) {
      add(i, "failed_output", `step ${i} failed but its output is not {"error": {"type", "message"}}`);
    }
    if (r.kind === "outcome") {
      if (i < M - 1) add(i + 1, "outcome", `steps follow the outcome step ${i}`);
      if (r.name !== "run.outcome" || r.status !== "ok") {
        add(i, "outcome", `outcome step ${i} is named ${JSON.stringify(r.name)} with status ${r.status}`);
      }
      if (values.input !== undefined && !isStringObject(values.input, ["workflow_type", "status"])) {
        add(i, "outcome", `outcome step ${i}'s input is not {"workflow_type", "status"} (strings)`);
      }
      if (values.output !== undefined && !isStringObject(values.output, ["outcome", "reason"])) {
        add(i, "outcome", `outcome step ${i}'s output is not {"outcome", "reason"} (strings)`);
      }
    }
    const out = members(values.output);
    if (r.kind === "chain" && r.status === "ok" && out !== null && out.has("tx_hash")) {
      const tx = asTxResult(out);
      if (tx === null) add(i, "tx_result", `chain step ${i}'s output has a tx_hash but not the TxResult shape`);
      else txResults.set(i, tx);
    }
  });
  const head = hex(heads[M] as Uint8Array);

  // ---- phase 3: anchors
  const queried = new Map<number, number[]>(); // anchor index -> steps referencing it
  const referenced: number[] = [];
  b.steps.forEach((st, i) => {
    if (st.anchor === null) {
      add(i, "unanchored", `step ${i} is not anchored`);
      return;
    }
    const a = b.anchors[st.anchor] as Anchor;
    if (!referenced.includes(st.anchor)) referenced.push(st.anchor);
    if ((b.anchor_mode === "batched") !== (a.type === "root")) {
      add(i, "anchor_mode", `step ${i} of a ${b.anchor_mode} run has a ${a.type} anchor`);
    }
    let trusted = true;
    if (!sameHex(a.registry, trust.registry)) {
      add(
        i,
        "untrusted_registry",
        `step ${i} is anchored on registry ${a.registry}, the trusted registry is ${trust.registry}`,
      );
      trusted = false;
    }
    if (a.chain_id !== trust.chain_id) {
      add(i, "untrusted_chain", `step ${i} is anchored on chain ${a.chain_id}, the trusted chain is ${trust.chain_id}`);
      trusted = false;
    }
    if (a.type === "root") {
      if (!proofReachesRoot(spec, hashes[i] as Uint8Array, st.proof ?? [], a.root)) {
        add(i, "proof", `step ${i}'s Merkle proof does not lead to root ${a.root}`);
      }
    } else if (a.seq !== i) {
      add(i, "anchor_tx", `step ${i}'s anchor entry is for step ${a.seq}`);
    }
    if (trusted && (a.type === "root" || a.seq < M)) {
      const list = queried.get(st.anchor) ?? [];
      list.push(i);
      queried.set(st.anchor, list);
    }
  });

  if (online) {
    const checks = [...queried.entries()].map(async ([index, users]) => {
      const a = b.anchors[index] as Anchor;
      const receipt = await node.receipt(a.tx_hash);
      const why = anchorProblem(a, receipt, trust, rk, hashes, heads);
      if (why !== null)
        for (const i of users) add(i, "anchor_tx", `step ${i}'s anchor transaction ${a.tx_hash}: ${why}`);
    });
    await Promise.all(checks);

    if (b.anchor_mode === "per-step") {
      const logs = await scan([TOPIC.Checkpointed, rk]);
      for (let s = 0; s < M; s++) {
        const mine = logs.filter((l) => l.topics.length >= 3 && BigInt(l.topics[2] as string) === BigInt(s));
        const st = b.steps[s] as StepEntry;
        const a = st.anchor === null ? null : (b.anchors[st.anchor] as Anchor);
        if (mine.length !== 1)
          add(s, "checkpoint_log", `step ${s} has ${mine.length} Checkpointed logs in the trusted registry, not 1`);
        else if (a === null || !sameHex((mine[0] as ChainLog).transactionHash, a.tx_hash)) {
          add(
            s,
            "checkpoint_log",
            `step ${s}'s Checkpointed log is in transaction ${(mine[0] as ChainLog).transactionHash}, not its anchor's`,
          );
        }
      }
      for (const l of logs) {
        if (l.topics.length >= 3 && BigInt(l.topics[2] as string) >= BigInt(M)) {
          add(
            M,
            "checkpoint_log",
            `the registry holds a Checkpointed log for step ${BigInt(l.topics[2] as string)}, beyond the bundle's ${M} steps`,
          );
        }
      }
    }
  }

  // ---- phase 4: the seal
  let sealed = false;
  let seal: Report["seal"] = null;
  if (!online) {
    // "When chain queries are skipped, sealed is false and this phase adds nothing" (10.5), for
    // version 1 bundles too
  } else if (spec === 1) {
    if (!options.allowUnsealedV1) add(M, "unsealed", "a version 1 run has no seal (allow_unsealed_v1 is not set)");
  } else {
    const logs = await scan([TOPIC.RunSealed, rk]);
    const seals = logs.map((l) => {
      const [n, h] = decodeWords(l, ["uint256", "bytes32"]) as [bigint, string];
      return { n, h, tx: l.transactionHash, block: l.blockNumber };
    });
    sealed = seals.length >= 1;
    const minWithM = (ns: bigint[]): number => Number(ns.reduce((m, n) => (n < m ? n : m), BigInt(M)));
    if (seals.length === 0) {
      add(
        M,
        "unsealed",
        `no RunSealed log for the run in the trusted registry${b.seal !== null ? " (the bundle's seal entry claims one)" : ""}`,
      );
    } else if (seals.length >= 2) {
      add(
        minWithM(seals.map((s) => s.n)),
        "multiple_seals",
        `the run was sealed ${seals.length} times (steps ${seals.map((s) => s.n).join(", ")})`,
      );
    } else {
      const s = seals[0] as (typeof seals)[number];
      seal = {
        steps: Number(s.n),
        head: s.h.toLowerCase(),
        tx_hash: s.tx.toLowerCase(),
        block_number: Number(s.block),
      };
      const first = minWithM([s.n]);
      if (s.n !== BigInt(M)) {
        add(
          first,
          "seal_steps",
          `the seal says ${s.n} steps, the bundle has ${M} (${BigInt(M) < s.n ? "missing tail" : "appended after the seal"})`,
        );
      } else if (!sameHex(s.h, head)) {
        add(Math.max(M - 1, 0), "seal_head", `the seal's head ${s.h} is not the recomputed head ${head}`);
      }
      const bs = b.seal;
      if (
        bs === null ||
        BigInt(bs.steps) !== s.n ||
        !sameHex(bs.head, s.h) ||
        !sameHex(bs.tx_hash, s.tx) ||
        BigInt(bs.block_number) !== s.block
      ) {
        add(
          first,
          "bundle_seal",
          bs === null
            ? "the bundle has no seal entry but the chain has a seal"
            : "the bundle's seal entry differs from the chain's seal",
        );
      }
      b.steps.forEach((st, i) => {
        if (st.anchor === null) return;
        const a = b.anchors[st.anchor] as Anchor;
        if (BigInt(a.block_number) > s.block)
          add(i, "after_seal", `step ${i} was anchored in block ${a.block_number}, after the seal's block ${s.block}`);
      });
      const last = b.steps[M - 1];
      if (s.n === BigInt(M) && (M === 0 || last?.record.kind !== "outcome")) {
        add(Math.max(M - 1, 0), "outcome", "the sealed run does not end with an outcome step");
      }
    }
  }

  // ---- phase 5: chain effects (version 2)
  const contractsSource: Report["contracts_source"] = trust.contracts === null ? "bundle" : "trust_root";
  if (spec === 2 && online) {
    const trusted = trust.contracts ?? [...b.contracts.values()];
    const isTrusted = (address: string): boolean => trusted.some((c) => sameHex(c, address));
    await Promise.all(
      [...txResults.entries()].map(async ([i, x]) => {
        const why = effectProblem(x, await node.receipt(x.tx_hash), isTrusted);
        if (why !== null) add(i, "chain_effect", `chain step ${i}'s transaction ${x.tx_hash}: ${why}`);
      }),
    );
  }

  findings.sort((p, q) => p.step - q.step || (p.code < q.code ? -1 : p.code > q.code ? 1 : 0));
  const firstBad = findings.length === 0 ? null : Math.min(...findings.map((f) => f.step));
  const anchors = referenced.map((index) => {
    const a = b.anchors[index] as Anchor;
    return a.type === "root"
      ? { tx_hash: a.tx_hash, block_number: a.block_number, root: a.root }
      : { tx_hash: a.tx_hash, block_number: a.block_number, step: a.seq };
  });
  return {
    workflow_id: b.workflow_id,
    run_id: b.run_id,
    workflow_type: b.workflow_type,
    anchor_mode: b.anchor_mode,
    ok: findings.length === 0,
    sealed,
    first_bad_step: firstBad,
    steps: M,
    head,
    spec_version: spec,
    registry: trust.registry,
    chain_id: trust.chain_id,
    contracts_source: contractsSource,
    anchors,
    seal,
    redacted,
    pending_steps: b.steps.filter((st) => st.anchor === null).length,
    findings,
    problems: findings.map((f) => `step ${f.step}: ${f.message} [${f.code}]`),
    verifier: VERIFIER,
  };
}

/** Why an anchor entry is not good (section 10.4), or null when it is. */
function anchorProblem(
  a: Anchor,
  receipt: Receipt | null,
  trust: TrustRoot,
  rk: string,
  hashes: Uint8Array[],
  heads: Uint8Array[],
): string | null {
  if (receipt === null) return "no such transaction on the trusted chain";
  if (receipt.status !== 1n) return `status ${receipt.status ?? "unknown"}, not 1`;
  if (receipt.blockNumber !== BigInt(a.block_number)) return `in block ${receipt.blockNumber}, not ${a.block_number}`;
  const expected = a.type === "root" ? [TOPIC.RootAnchored, a.root] : [TOPIC.Checkpointed, rk, uint256(a.seq)];
  const logs = receipt.logs.filter((l) => sameHex(l.address, trust.registry) && sameTopics(l.topics, expected));
  if (logs.length !== 1)
    return `${logs.length} matching ${a.type === "root" ? "RootAnchored" : "Checkpointed"} logs of the trusted registry, not 1`;
  const log = logs[0] as ChainLog;
  const data =
    a.type === "root"
      ? uint256(a.leaf_count)
      : `0x${hex(hashes[a.seq] as Uint8Array).slice(2)}${hex(heads[a.seq + 1] as Uint8Array).slice(2)}`;
  if (!sameHex(log.data, data)) return "its log's data does not match the anchor";
  return null;
}

/** Why a chain step's effect is not on the trusted chain (section 10.6), or null when it is. */
function effectProblem(x: TxResult, receipt: Receipt | null, isTrusted: (a: string) => boolean): string | null {
  if (receipt === null) return "no such transaction on the trusted chain";
  if (receipt.status !== 1n) return `status ${receipt.status ?? "unknown"}, not 1`;
  if (receipt.blockNumber !== x.block_number || !sameHex(receipt.blockHash, x.block_hash)) {
    return `in block ${receipt.blockNumber} (${receipt.blockHash}), not ${x.block_number} (${x.block_hash})`;
  }
  if (!sameHex(receipt.to, x.to)) return `sent to ${receipt.to}, not ${x.to}`;
  if (!isTrusted(x.to)) return `sent to ${x.to}, which is not a trusted contract`;
  if (receipt.gasUsed !== x.gas_used) return `gasUsed ${receipt.gasUsed}, not ${x.gas_used}`;
  if (x.event !== null) {
    const ev = x.event;
    const found = receipt.logs.some(
      (l) => l.logIndex === ev.log_index && sameHex(l.address, ev.address) && sameTopics(l.topics, ev.topics),
    );
    if (!found) return `no log ${ev.log_index} from ${ev.address} with the recorded topics`;
    if (!isTrusted(ev.address)) return `its event comes from ${ev.address}, which is not a trusted contract`;
  }
  return null;
}
