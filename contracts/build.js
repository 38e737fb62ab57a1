#!/usr/bin/env node
// Compile contracts/src/*.sol with the pinned solc-js and write contracts/artifacts/<Name>.json.
//
//   node build.js                       compile and (re)write the artifacts
//   node build.js --check               compile in memory; exit 1 naming every artifact that differs
//   node build.js --artifacts-dir DIR   use DIR instead of contracts/artifacts (both modes)
//
// The output is deterministic: sources are read in sorted order under stable, relative source
// unit names ("src/X.sol", "node_modules/@openzeppelin/..."), JSON keys are sorted and the
// formatting is fixed, so the committed artifacts can be checked for reproducibility.
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = __dirname;
const SRC_DIR = "src";
const DEFAULT_ARTIFACTS_DIR = path.join(ROOT, "artifacts");

const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  remappings: ["@openzeppelin/=node_modules/@openzeppelin/"],
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"] },
  },
};

function usage(message) {
  if (message) process.stderr.write(`build.js: ${message}\n`);
  process.stderr.write("usage: node build.js [--check] [--artifacts-dir DIR]\n");
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { check: false, artifactsDir: DEFAULT_ARTIFACTS_DIR };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--check") opts.check = true;
    else if (arg === "--artifacts-dir") {
      if (i + 1 >= argv.length) usage("--artifacts-dir needs a directory");
      opts.artifactsDir = path.resolve(argv[++i]);
    } else if (arg.startsWith("--artifacts-dir=")) {
      opts.artifactsDir = path.resolve(arg.slice("--artifacts-dir=".length));
    } else if (arg === "-h" || arg === "--help") usage();
    else usage(`unknown argument ${arg}`);
  }
  return opts;
}

// Resolve an import (already remapped by solc) inside the contracts directory only.
function findImports(unitName) {
  const resolved = path.resolve(ROOT, unitName);
  if (path.isAbsolute(unitName) || !resolved.startsWith(ROOT + path.sep)) {
    return { error: `import outside the contracts directory: ${unitName}` };
  }
  try {
    return { contents: fs.readFileSync(resolved, "utf8") };
  } catch (err) {
    return { error: `cannot read ${unitName} (run npm ci in contracts/): ${err.code || err}` };
  }
}

// Deep copy with object keys in sorted order (arrays keep their order).
function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = sortKeys(value[key]);
    return out;
  }
  return value;
}

function render(artifact) {
  return JSON.stringify(sortKeys(artifact), null, 2) + "\n";
}

// Returns Map(fileName -> content) of every artifact our sources produce.
function compile() {
  const srcNames = fs
    .readdirSync(path.join(ROOT, SRC_DIR))
    .filter((f) => f.endsWith(".sol"))
    .sort();
  if (srcNames.length === 0) throw new Error(`no Solidity sources in ${SRC_DIR}/`);

  const sources = {};
  for (const f of srcNames) {
    const unit = `${SRC_DIR}/${f}`;
    sources[unit] = { content: fs.readFileSync(path.join(ROOT, unit), "utf8") };
  }
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));

  let failed = false;
  for (const e of output.errors || []) {
    // Warnings from our own sources are worth seeing; OpenZeppelin's are not ours to fix.
    const ours = !e.sourceLocation || e.sourceLocation.file.startsWith(`${SRC_DIR}/`);
    if (e.severity === "error") failed = true;
    if (e.severity === "error" || ours) process.stderr.write(e.formattedMessage || e.message);
  }
  if (failed) throw new Error("compilation failed");

  const artifacts = new Map();
  for (const unit of Object.keys(sources)) {
    const contracts = output.contracts[unit] || {};
    for (const name of Object.keys(contracts).sort()) {
      const c = contracts[name];
      if (!c.evm.bytecode.object) continue; // interfaces and abstract contracts
      const file = `${name}.json`;
      if (artifacts.has(file)) throw new Error(`contract name ${name} is defined twice`);
      const metadata = JSON.parse(c.metadata);
      artifacts.set(
        file,
        render({
          abi: c.abi,
          bytecode: `0x${c.evm.bytecode.object}`,
          compiler: metadata.compiler.version,
          contractName: name,
          deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
          sourceHash: metadata.sources[unit].keccak256,
          sourceName: unit,
        }),
      );
    }
  }
  return artifacts;
}

function existingArtifacts(dir) {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((f) => f.endsWith(".json")).sort();
}

function check(artifacts, dir) {
  const problems = [];
  for (const [file, content] of artifacts) {
    const target = path.join(dir, file);
    if (!fs.existsSync(target)) problems.push(`${file}: missing`);
    else if (fs.readFileSync(target, "utf8") !== content) problems.push(`${file}: differs from a fresh build`);
  }
  for (const file of existingArtifacts(dir)) {
    if (!artifacts.has(file)) problems.push(`${file}: stale (no source produces it)`);
  }
  if (problems.length) {
    process.stderr.write(`artifacts in ${path.relative(process.cwd(), dir) || "."} are not reproducible:\n`);
    for (const p of problems) process.stderr.write(`  ${p}\n`);
    process.stderr.write("run `make contracts` (node contracts/build.js) and commit the result\n");
    return 1;
  }
  process.stdout.write(`${artifacts.size} artifacts match a fresh build (solc ${solc.version()})\n`);
  return 0;
}

function write(artifacts, dir) {
  fs.mkdirSync(dir, { recursive: true });
  for (const file of existingArtifacts(dir)) {
    if (!artifacts.has(file)) fs.unlinkSync(path.join(dir, file));
  }
  for (const [file, content] of artifacts) {
    const target = path.join(dir, file);
    if (fs.existsSync(target) && fs.readFileSync(target, "utf8") === content) continue;
    const tmp = `${target}.tmp`;
    fs.writeFileSync(tmp, content);
    fs.renameSync(tmp, target);
  }
  process.stdout.write(`wrote ${artifacts.size} artifacts (solc ${solc.version()})\n`);
  return 0;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  let artifacts;
  try {
    artifacts = compile();
  } catch (err) {
    process.stderr.write(`build.js: ${err.message}\n`);
    return 1;
  }
  return opts.check ? check(artifacts, opts.artifactsDir) : write(artifacts, opts.artifactsDir);
}

process.exitCode = main();
