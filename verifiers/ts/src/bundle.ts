/**
 * Phase 0 of the verification algorithm (spec section 10.1): parse an audit bundle and check the
 * shape of sections 9.1 to 9.3. A bundle that fails is malformed: no verdict.
 */

import { Json, JsonObject, JsonSyntaxError, isWellFormed, parseJson } from "./json.js";
import { ADDRESS, HEX32, KINDS_V1, KINDS_V2 } from "./spec.js";

export class MalformedBundle extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MalformedBundle";
  }
}

export interface Part {
  /** the salt's hex32 text (version 2) or null (version 1) */
  salt: string | null;
  /** the preimage text as given (may hold a lone surrogate: a finding, not malformed) */
  preimage: string;
}

export interface StepRecord {
  /** the record object exactly as parsed: what is hashed */
  raw: JsonObject;
  v: number;
  run: string;
  seq: number;
  kind: string;
  name: string;
  input: string;
  output: string;
  status: string;
  prev: string;
}

export interface StepEntry {
  record: StepRecord;
  input: Part | null;
  output: Part | null;
  anchor: number | null;
  proof: string[] | null;
}

interface AnchorBase {
  chain_id: number;
  registry: string;
  tx_hash: string;
  block_number: number;
}

export interface RootAnchor extends AnchorBase {
  type: "root";
  root: string;
  leaf_count: number;
}

export interface StepAnchor extends AnchorBase {
  type: "step";
  seq: number;
}

export type Anchor = RootAnchor | StepAnchor;

export interface SealEntry {
  steps: number;
  head: string;
  chain_id: number;
  registry: string;
  tx_hash: string;
  block_number: number;
}

export interface Bundle {
  spec_version: 1 | 2;
  workflow_id: string;
  run_id: string;
  run_key: string;
  workflow_type: string;
  anchor_mode: "batched" | "per-step";
  chain_id: number;
  registry: string;
  registry_deployment_block: number;
  contracts: Map<string, string>;
  steps: StepEntry[];
  anchors: Anchor[];
  seal: SealEntry | null;
}

const MAX_INT = 2n ** 53n;
const RECORD_MEMBERS = ["v", "run", "seq", "kind", "name", "input", "output", "status", "prev"];
const STEP_MEMBERS = ["record", "input", "output", "anchor", "proof"];
const PART_MEMBERS = ["salt", "preimage"];
const ROOT_MEMBERS = ["type", "chain_id", "registry", "tx_hash", "block_number", "root", "leaf_count"];
const STEP_ANCHOR_MEMBERS = ["type", "chain_id", "registry", "tx_hash", "block_number", "seq"];
const SEAL_MEMBERS = ["steps", "head", "chain_id", "registry", "tx_hash", "block_number"];
const TOP_MEMBERS = [
  "format",
  "spec_version",
  "workflow_id",
  "run_id",
  "run_key",
  "workflow_type",
  "anchor_mode",
  "chain_id",
  "registry",
  "registry_deployment_block",
  "contracts",
  "steps",
  "anchors",
  "seal",
];

class Shape {
  constructor(readonly path: string) {}

  fail(what: string): never {
    throw new MalformedBundle(`${this.path}: ${what}`);
  }

  at(key: string | number): Shape {
    return new Shape(typeof key === "number" ? `${this.path}[${key}]` : `${this.path}.${key}`);
  }

  object(v: Json | undefined, members: string[] | null, exact: boolean): JsonObject {
    if (!(v instanceof JsonObject)) return this.fail("not an object");
    if (members !== null) {
      for (const m of members) if (!v.has(m)) this.fail(`missing member ${m}`);
      if (exact)
        for (const k of v.keys()) if (!members.includes(k)) this.fail(`unexpected member ${JSON.stringify(k)}`);
    }
    return v;
  }

  string(v: Json | undefined): string {
    if (typeof v !== "string") return this.fail("not a string");
    if (!isWellFormed(v)) this.fail("a string with a lone surrogate");
    return v;
  }

  /** An integer in [min, 2^53). */
  integer(v: Json | undefined, min: number): number {
    if (typeof v !== "bigint") return this.fail("not an integer");
    if (v < BigInt(min) || v >= MAX_INT) this.fail(`integer out of range [${min}, 2^53)`);
    return Number(v);
  }

  hex32(v: Json | undefined): string {
    if (typeof v !== "string" || !HEX32.test(v)) return this.fail("not hex32 (0x + 64 lower-case hex digits)");
    return v;
  }

  address(v: Json | undefined): string {
    if (typeof v !== "string" || !ADDRESS.test(v)) return this.fail("not an address");
    return v;
  }

  oneOf<T extends string>(v: Json | undefined, allowed: readonly T[]): T {
    if (typeof v !== "string" || !(allowed as readonly string[]).includes(v)) {
      return this.fail(`not one of ${allowed.join(", ")}`);
    }
    return v as T;
  }

  array(v: Json | undefined): Json[] {
    if (!Array.isArray(v)) return this.fail("not an array");
    return v;
  }
}

// A leading byte order mark is dropped: RFC 8259 section 8.1 lets a parser ignore one, and the
// bundle's own text is never hashed (preimages are strings inside it).
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/** Decode and parse the bundle file's bytes, then check its shape. */
export function parseBundle(data: Uint8Array): Bundle {
  let text: string;
  try {
    text = utf8.decode(data);
  } catch {
    throw new MalformedBundle("the bundle is not valid UTF-8");
  }
  let json: Json;
  try {
    json = parseJson(text, { allowFractions: true });
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new MalformedBundle(`the bundle is not JSON: ${e.message}`);
    throw e;
  }
  return checkShape(json);
}

function checkPart(s: Shape, v: Json | undefined, spec: 1 | 2): Part | null {
  if (v === null) return null;
  const o = s.object(v, PART_MEMBERS, true);
  let salt: string | null;
  if (spec === 2) salt = s.at("salt").hex32(o.get("salt"));
  else if (o.get("salt") !== null) return s.at("salt").fail("must be null in a version 1 bundle");
  else salt = null;
  const preimage = o.get("preimage");
  // a lone surrogate in a preimage is a finding of phase 2, not a malformed bundle
  if (typeof preimage !== "string") return s.at("preimage").fail("not a string");
  return { salt, preimage };
}

function checkRecord(s: Shape, v: Json | undefined, spec: 1 | 2): StepRecord {
  const o = s.object(v, RECORD_MEMBERS, true);
  const rv = s.at("v").integer(o.get("v"), 0);
  if (rv !== spec) s.at("v").fail(`is ${rv}, the bundle's spec_version is ${spec}`);
  return {
    raw: o,
    v: rv,
    run: s.at("run").hex32(o.get("run")),
    seq: s.at("seq").integer(o.get("seq"), 0),
    kind: s.at("kind").oneOf(o.get("kind"), spec === 2 ? KINDS_V2 : KINDS_V1),
    name: s.at("name").string(o.get("name")),
    input: s.at("input").hex32(o.get("input")),
    output: s.at("output").hex32(o.get("output")),
    status: s.at("status").oneOf(o.get("status"), ["ok", "failed"]),
    prev: s.at("prev").hex32(o.get("prev")),
  };
}

function checkAnchor(s: Shape, v: Json | undefined): Anchor {
  const o = s.object(v, ["type"], false);
  const type = s.at("type").oneOf(o.get("type"), ["root", "step"]);
  s.object(v, type === "root" ? ROOT_MEMBERS : STEP_ANCHOR_MEMBERS, true);
  const base = {
    chain_id: s.at("chain_id").integer(o.get("chain_id"), 1),
    registry: s.at("registry").address(o.get("registry")),
    tx_hash: s.at("tx_hash").hex32(o.get("tx_hash")),
    block_number: s.at("block_number").integer(o.get("block_number"), 1),
  };
  if (type === "root") {
    return {
      type,
      ...base,
      root: s.at("root").hex32(o.get("root")),
      leaf_count: s.at("leaf_count").integer(o.get("leaf_count"), 1),
    };
  }
  return { type, ...base, seq: s.at("seq").integer(o.get("seq"), 0) };
}

function checkSeal(s: Shape, v: Json | undefined): SealEntry | null {
  if (v === null) return null;
  const o = s.object(v, SEAL_MEMBERS, true);
  return {
    steps: s.at("steps").integer(o.get("steps"), 0),
    head: s.at("head").hex32(o.get("head")),
    chain_id: s.at("chain_id").integer(o.get("chain_id"), 1),
    registry: s.at("registry").address(o.get("registry")),
    tx_hash: s.at("tx_hash").hex32(o.get("tx_hash")),
    block_number: s.at("block_number").integer(o.get("block_number"), 1),
  };
}

/** Section 10.1: the shape of a bundle (members, types, versions, indices). */
export function checkShape(json: Json): Bundle {
  const top = new Shape("bundle");
  const o = top.object(json, TOP_MEMBERS, false);
  if (o.get("format") !== "ledgerflow-audit-bundle") top.at("format").fail("not ledgerflow-audit-bundle");
  const specValue = o.get("spec_version");
  if (specValue !== 1n && specValue !== 2n) top.at("spec_version").fail("not 1 or 2");
  const spec: 1 | 2 = specValue === 1n ? 1 : 2;

  const contractsShape = top.at("contracts");
  const contractsObj = contractsShape.object(o.get("contracts"), null, false);
  const contracts = new Map<string, string>();
  for (const name of contractsObj.keys()) {
    contractsShape.string(name);
    contracts.set(name, contractsShape.at(name).address(contractsObj.get(name)));
  }

  const anchors = top
    .at("anchors")
    .array(o.get("anchors"))
    .map((a, k) => checkAnchor(top.at("anchors").at(k), a));

  const steps = top
    .at("steps")
    .array(o.get("steps"))
    .map((v, k): StepEntry => {
      const s = top.at("steps").at(k);
      const e = s.object(v, STEP_MEMBERS, true);
      const record = checkRecord(s.at("record"), e.get("record"), spec);
      const input = checkPart(s.at("input"), e.get("input"), spec);
      const output = checkPart(s.at("output"), e.get("output"), spec);
      const anchorValue = e.get("anchor");
      let anchor: number | null = null;
      if (anchorValue !== null) {
        anchor = s.at("anchor").integer(anchorValue, 0);
        if (anchor >= anchors.length) s.at("anchor").fail(`index ${anchor} out of range (${anchors.length} anchors)`);
      }
      const isRoot = anchor !== null && anchors[anchor]?.type === "root";
      const proofValue = e.get("proof");
      let proof: string[] | null = null;
      if (isRoot) {
        proof = s
          .at("proof")
          .array(proofValue)
          .map((p, j) => s.at("proof").at(j).hex32(p));
      } else if (proofValue !== null) {
        s.at("proof").fail("must be null unless the step's anchor is a root anchor");
      }
      return { record, input, output, anchor, proof };
    });

  return {
    spec_version: spec,
    workflow_id: top.at("workflow_id").string(o.get("workflow_id")),
    run_id: top.at("run_id").string(o.get("run_id")),
    run_key: top.at("run_key").hex32(o.get("run_key")),
    workflow_type: top.at("workflow_type").string(o.get("workflow_type")),
    anchor_mode: top.at("anchor_mode").oneOf(o.get("anchor_mode"), ["batched", "per-step"]),
    chain_id: top.at("chain_id").integer(o.get("chain_id"), 1),
    registry: top.at("registry").address(o.get("registry")),
    registry_deployment_block: top.at("registry_deployment_block").integer(o.get("registry_deployment_block"), 0),
    contracts,
    steps,
    anchors,
    seal: checkSeal(top.at("seal"), o.get("seal")),
  };
}
