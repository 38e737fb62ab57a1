#!/usr/bin/env node
/**
 * node dist/cli.js --bundle FILE [--bundle FILE ...] [--rpc URL]
 *                  [--registry ADDR --chain-id N [--from-block B] [--contract ADDR ...]]
 *                  [--deployments FILE] [--allow-unsealed-v1] [--json]
 *
 * node dist/cli.js --manifest FILE [--json]      (the conformance cases of spec section 10.10)
 *
 * Exit status: 0 iff the run verifies, 1 when it does not, 2 on a malformed bundle or an error
 * (unreadable file, missing trust root, unreachable node), as spec section 10.8 says.
 */

import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";

import { MalformedBundle, parseBundle } from "./bundle.js";
import { JsonObject, parseJson } from "./json.js";
import { RpcChain } from "./chain.js";
import { TrustError, explicitTrust, trustFromDeployments, trustFromJson } from "./trust.js";
import { VERIFIER, verifyBundle, type Report, type TrustRoot } from "./verify.js";

const USAGE = `usage: ledgerflow-verify-ts --bundle FILE [--bundle FILE ...] [--rpc URL]
         [--registry ADDR --chain-id N [--from-block B] [--contract ADDR]...]
         [--deployments FILE] [--allow-unsealed-v1] [--log-range BLOCKS] [--offline] [--json]
       ledgerflow-verify-ts --manifest FILE [--log-range BLOCKS] [--offline] [--json]

Verifies a ledgerflow audit bundle against the chain (checkpoint spec version 2, section 10).
Trust root: --registry/--chain-id, else --deployments FILE, else $LEDGERFLOW_DEPLOYMENTS_FILE,
else $LEDGERFLOW_HOME/deployments.json (LEDGERFLOW_HOME defaults to .ledgerflow).
RPC: --rpc (or --rpc-url), else $LEDGERFLOW_RPC_URL, else http://127.0.0.1:8545.
Exit 0 iff the run verifies, 1 if it does not, 2 on a malformed bundle or an error.
With several --bundle files (one trust root), --json prints a list with one result per file and
the exit status is 2 if any file had an error, else 1 if any run does not verify, else 0.
--offline asks no node: records, commitments and proofs are checked, nothing on chain, so the run
never verifies (finding node_chain at step 0, spec 10.2).
--manifest runs the conformance cases of a manifest (spec section 10.10: each case names its
bundle file, RPC endpoint, trust root and, optionally, its expected verdict); exit 0 iff every
expected verdict is met.`;

class UsageError extends Error {}

function trustRoot(v: Record<string, string | string[] | boolean | undefined>): TrustRoot {
  const registry = v["registry"] as string | undefined;
  const chainId = v["chain-id"] as string | undefined;
  if (registry !== undefined || chainId !== undefined) {
    if (registry === undefined || chainId === undefined) throw new UsageError("--registry and --chain-id go together");
    return explicitTrust(
      registry,
      chainId,
      v["from-block"] as string | undefined,
      (v["contract"] as string[] | undefined) ?? [],
    );
  }
  const path =
    (v["deployments"] as string | undefined) ??
    process.env["LEDGERFLOW_DEPLOYMENTS_FILE"] ??
    join(process.env["LEDGERFLOW_HOME"] ?? ".ledgerflow", "deployments.json");
  return trustFromDeployments(path);
}

function human(r: Report): string {
  const lines = [
    `${r.ok ? "VERIFIED" : "NOT VERIFIED"}: ${r.workflow_id} / ${r.run_id} (spec ${r.spec_version})`,
    `  steps ${r.steps}, head ${r.head}, sealed ${r.sealed}, first bad step ${r.first_bad_step ?? "none"}`,
    `  checked against registry ${r.registry} on chain ${r.chain_id} (contracts from the ${r.contracts_source === "bundle" ? "bundle" : "trust root"})`,
  ];
  for (const d of r.redacted) lines.push(`  redacted: step ${d.step} ${d.parts.join(", ")}`);
  for (const p of r.problems) lines.push(`  ${p}`);
  return lines.join("\n");
}

function output(json: boolean, value: unknown, text: string): void {
  process.stdout.write((json ? JSON.stringify(value, null, 2) : text) + "\n");
}

async function main(argv: string[]): Promise<number> {
  let v: Values;
  try {
    v = parseArgs({
      args: argv,
      options: {
        bundle: { type: "string", multiple: true },
        manifest: { type: "string" },
        rpc: { type: "string" },
        "rpc-url": { type: "string" },
        registry: { type: "string" },
        "chain-id": { type: "string" },
        "from-block": { type: "string" },
        contract: { type: "string", multiple: true },
        deployments: { type: "string" },
        "allow-unsealed-v1": { type: "boolean" },
        offline: { type: "boolean" },
        "log-range": { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean" },
      },
      strict: true,
    }).values;
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (v["help"]) {
    process.stdout.write(USAGE + "\n");
    return 0;
  }
  const json = v["json"] === true;
  const fail = (message: string): number => {
    process.stderr.write(`error: ${message}\n`);
    if (json) output(true, { ok: false, error: message, verifier: VERIFIER }, "");
    return 2;
  };
  const files = (v["bundle"] as string[] | undefined) ?? [];
  const manifest = v["manifest"] as string | undefined;
  if ((files.length === 0) === (manifest === undefined))
    return fail("give --bundle FILE (one or more) or --manifest FILE");
  let logRange: bigint | undefined;
  try {
    const range = v["log-range"] as string | undefined;
    if (range !== undefined && !/^[1-9][0-9]*$/.test(range)) {
      throw new UsageError("--log-range must be a positive integer");
    }
    logRange = range === undefined ? undefined : BigInt(range);
    if (manifest !== undefined) return await runManifest(manifest, json, logRange, v["offline"] === true);
  } catch (e) {
    if (e instanceof TrustError || e instanceof UsageError) return fail(e.message);
    throw e;
  }

  let trust: TrustRoot;
  try {
    trust = trustRoot(v);
  } catch (e) {
    if (e instanceof TrustError || e instanceof UsageError) return fail(e.message);
    throw e;
  }
  const rpc =
    (v["rpc"] as string | undefined) ??
    (v["rpc-url"] as string | undefined) ??
    process.env["LEDGERFLOW_RPC_URL"] ??
    "http://127.0.0.1:8545";
  const chain = v["offline"] === true ? null : new RpcChain(rpc, logRange);
  const options = { allowUnsealedV1: v["allow-unsealed-v1"] === true };

  const results = await mapLimit(files, PARALLEL, (file) => verifyFile(file, trust, chain, options));
  if (files.length === 1) {
    const [r] = results as [Result];
    if ("error" in r) return fail(r.error);
    output(json, r, human(r));
    return r.ok ? 0 : 1;
  }
  // several bundles against one trust root: a list of results, worst status wins
  for (const r of results) if ("error" in r) process.stderr.write(`error: ${r.bundle}: ${r.error}\n`);
  output(
    json,
    results,
    results.map((r) => ("error" in r ? `ERROR: ${r.bundle}: ${r.error}` : `${r.bundle}\n${human(r)}`)).join("\n"),
  );
  return worst(results);
}

type Values = Record<string, string | string[] | boolean | undefined>;

type Result = (Report & { bundle: string }) | { bundle: string; ok: false; error: string; malformed: boolean };

/** How many bundles are verified at once (each mostly waits for the node). */
const PARALLEL = 8;

function worst(results: Result[]): number {
  if (results.some((r) => "error" in r)) return 2;
  return results.every((r) => r.ok) ? 0 : 1;
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const k = next++;
      out[k] = await fn(items[k] as T, k);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

async function verifyFile(
  file: string,
  trust: TrustRoot,
  chain: RpcChain | null,
  options: { allowUnsealedV1: boolean },
): Promise<Result> {
  try {
    const bundle = parseBundle(readFileSync(file));
    return { bundle: file, ...(await verifyBundle(bundle, trust, chain, options)) };
  } catch (e) {
    if (e instanceof MalformedBundle) {
      return { bundle: file, ok: false, error: `malformed bundle: ${e.message}`, malformed: true };
    }
    const message = `${(e as Error).name}: ${(e as Error).message.split("\n")[0]}`;
    return { bundle: file, ok: false, error: message, malformed: false };
  }
}

/**
 * Conformance cases (spec section 10.10): a manifest `{"cases": [{"name", "file", "rpc_url",
 * "trust": {"chain_id", "registry", "from_block", "contracts"}, "expected"?,
 * "allow_unsealed_v1"?}]}`, each file relative to the manifest. Prints one result per case (with
 * `conforms` where an expected verdict is given); exit 0 iff every expected verdict was given,
 * 2 if a case could not be read or verified, else 1.
 */
async function runManifest(
  path: string,
  json: boolean,
  logRange: bigint | undefined,
  offline: boolean,
): Promise<number> {
  const m = parseJson(readFileSync(path, "utf8"), { allowFractions: true });
  const cases = m instanceof JsonObject ? m.get("cases") : undefined;
  if (!Array.isArray(cases)) throw new UsageError(`${path} has no "cases" list`);
  const chains = new Map<string, RpcChain>();
  const results = await mapLimit(cases, PARALLEL, async (c, k) => {
    if (!(c instanceof JsonObject)) throw new UsageError(`case ${k} of ${path} is not an object`);
    const str = (key: string): string => {
      const x = c.get(key);
      if (typeof x !== "string") throw new UsageError(`case ${k} of ${path}: ${key} is not a string`);
      return x;
    };
    const name = str("name");
    const rpc = str("rpc_url");
    const trust = trustFromJson(c.get("trust"), `case ${name}`);
    const chain = offline ? null : (chains.get(rpc) ?? new RpcChain(rpc, logRange));
    if (chain !== null) chains.set(rpc, chain);
    const result = await verifyFile(resolve(dirname(path), str("file")), trust, chain, {
      allowUnsealedV1: c.get("allow_unsealed_v1") === true,
    });
    const expected = c.get("expected");
    if (!(expected instanceof JsonObject)) return { name, ...result };
    const want = {
      ok: expected.get("ok"),
      sealed: expected.get("sealed"),
      first_bad_step: expected.get("first_bad_step") === null ? null : Number(expected.get("first_bad_step")),
    };
    const conforms =
      !("error" in result) &&
      result.ok === want.ok &&
      result.sealed === want.sealed &&
      result.first_bad_step === want.first_bad_step;
    return { name, ...result, expected: want, conforms };
  });
  output(
    json,
    results,
    results
      .map(
        (r) =>
          `${"conforms" in r ? (r.conforms ? "CONFORMS " : "DIFFERS  ") : ""}${r.name}: ${"error" in r ? `ERROR ${r.error}` : `ok=${r.ok} sealed=${r.sealed} first_bad_step=${r.first_bad_step}`}`,
      )
      .join("\n"),
  );
  if (results.some((r) => "error" in r)) return 2;
  return results.every((r) => !("conforms" in r) || r.conforms) ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`error: ${String(e)}\n`);
    process.exitCode = 2;
  },
);
