#!/usr/bin/env node
/**
 * node dist/cli.js --bundle FILE [--bundle FILE ...] [--rpc URL]
 *                  [--registry ADDR --chain-id N [--from-block B] [--contract ADDR ...]]
 *                  [--deployments FILE] [--allow-unsealed-v1] [--json]
 *
 * Exit status: 0 iff the run verifies, 1 when it does not, 2 on a malformed bundle or an error
 * (unreadable file, missing trust root, unreachable node), as spec section 10.8 says.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";

import { MalformedBundle, parseBundle } from "./bundle.js";
import { RpcChain } from "./chain.js";
import { TrustError, explicitTrust, trustFromDeployments } from "./trust.js";
import { VERIFIER, verifyBundle, type Report, type TrustRoot } from "./verify.js";

const USAGE = `usage: ledgerflow-verify-ts --bundle FILE [--bundle FILE ...] [--rpc URL]
         [--registry ADDR --chain-id N [--from-block B] [--contract ADDR]...]
         [--deployments FILE] [--allow-unsealed-v1] [--log-range BLOCKS] [--json]

Verifies a ledgerflow audit bundle against the chain (checkpoint spec version 2, section 10).
Trust root: --registry/--chain-id, else --deployments FILE, else $LEDGERFLOW_DEPLOYMENTS_FILE,
else $LEDGERFLOW_HOME/deployments.json (LEDGERFLOW_HOME defaults to .ledgerflow).
RPC: --rpc (or --rpc-url), else $LEDGERFLOW_RPC_URL, else http://127.0.0.1:8545.
Exit 0 iff the run verifies, 1 if it does not, 2 on a malformed bundle or an error.
With several --bundle files (one trust root), --json prints a list with one result per file and
the exit status is 2 if any file had an error, else 1 if any run does not verify, else 0.`;

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
  let v: Record<string, string | string[] | boolean | undefined>;
  try {
    v = parseArgs({
      args: argv,
      options: {
        bundle: { type: "string", multiple: true },
        rpc: { type: "string" },
        "rpc-url": { type: "string" },
        registry: { type: "string" },
        "chain-id": { type: "string" },
        "from-block": { type: "string" },
        contract: { type: "string", multiple: true },
        deployments: { type: "string" },
        "allow-unsealed-v1": { type: "boolean" },
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
  if (files.length === 0) return fail("--bundle FILE is required");
  let trust: TrustRoot;
  let chain: RpcChain;
  try {
    trust = trustRoot(v);
    const rpc =
      (v["rpc"] as string | undefined) ??
      (v["rpc-url"] as string | undefined) ??
      process.env["LEDGERFLOW_RPC_URL"] ??
      "http://127.0.0.1:8545";
    const range = v["log-range"] as string | undefined;
    if (range !== undefined && !/^[1-9][0-9]*$/.test(range))
      throw new UsageError("--log-range must be a positive integer");
    chain = new RpcChain(rpc, range === undefined ? undefined : BigInt(range));
  } catch (e) {
    if (e instanceof TrustError || e instanceof UsageError) return fail(e.message);
    throw e;
  }
  const options = { allowUnsealedV1: v["allow-unsealed-v1"] === true };

  const results: Result[] = [];
  for (const file of files) results.push(await verifyFile(file, trust, chain, options));
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
  if (results.some((r) => "error" in r)) return 2;
  return results.every((r) => "ok" in r && r.ok) ? 0 : 1;
}

type Result = (Report & { bundle: string }) | { bundle: string; ok: false; error: string; malformed: boolean };

async function verifyFile(
  file: string,
  trust: TrustRoot,
  chain: RpcChain,
  options: { allowUnsealedV1: boolean },
): Promise<Result> {
  try {
    const bundle = parseBundle(readFileSync(file));
    return { bundle: file, ...(await verifyBundle(bundle, trust, chain, options)) };
  } catch (e) {
    if (e instanceof MalformedBundle)
      return { bundle: file, ok: false, error: `malformed bundle: ${e.message}`, malformed: true };
    const message = `${(e as Error).name}: ${(e as Error).message.split("\n")[0]}`;
    return { bundle: file, ok: false, error: message, malformed: false };
  }
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
