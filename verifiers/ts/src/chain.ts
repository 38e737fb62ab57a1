/**
 * What the verifier asks the chain: four JSON-RPC methods (`eth_chainId`, `eth_blockNumber`,
 * `eth_getLogs`, `eth_getTransactionReceipt`), through viem's HTTP transport. Answers are taken
 * as raw JSON-RPC objects and converted here, so every comparison the algorithm makes is on the
 * node's own values (hashes and addresses compared case-insensitively, spec section 1).
 */

import { createPublicClient, http, type Hex, type PublicClient } from "viem";

export interface ChainLog {
  address: string;
  topics: string[];
  data: string;
  transactionHash: string;
  blockNumber: bigint;
  logIndex: bigint;
}

export interface Receipt {
  status: bigint | null;
  blockNumber: bigint;
  blockHash: string;
  to: string | null;
  gasUsed: bigint;
  logs: ChainLog[];
}

export interface ChainReader {
  chainId(): Promise<bigint>;
  blockNumber(): Promise<bigint>;
  /** Logs of `address` whose first topics are `topics`, over [from, to] (inclusive). */
  logs(address: string, topics: string[], from: bigint, to: bigint): Promise<ChainLog[]>;
  /** The receipt of `txHash`, or null when the node knows no such mined transaction. */
  receipt(txHash: string): Promise<Receipt | null>;
}

export class ChainError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ChainError";
  }
}

function quantity(v: unknown, what: string): bigint {
  if (typeof v !== "string" || !/^0x[0-9a-fA-F]+$/.test(v))
    throw new ChainError(`the node returned a bad ${what}: ${String(v)}`);
  return BigInt(v);
}

function data(v: unknown, what: string): string {
  if (typeof v !== "string" || !/^0x([0-9a-fA-F]{2})*$/.test(v))
    throw new ChainError(`the node returned a bad ${what}`);
  return v;
}

function toLog(raw: unknown): ChainLog {
  const r = raw as Record<string, unknown>;
  if (!Array.isArray(r["topics"])) throw new ChainError("the node returned a log without topics");
  return {
    address: data(r["address"], "log address"),
    topics: (r["topics"] as unknown[]).map((t) => data(t, "log topic")),
    data: data(r["data"], "log data"),
    transactionHash: data(r["transactionHash"], "log transaction hash"),
    blockNumber: quantity(r["blockNumber"], "log block number"),
    logIndex: quantity(r["logIndex"], "log index"),
  };
}

/** A JSON-RPC endpoint read through viem. Log scans are split into ranges of `logRange` blocks. */
export class RpcChain implements ChainReader {
  private readonly client: PublicClient;

  constructor(
    url: string,
    private readonly logRange: bigint = 100_000n,
  ) {
    this.client = createPublicClient({ transport: http(url, { retryCount: 2, timeout: 30_000 }) });
  }

  async chainId(): Promise<bigint> {
    return quantity(await this.client.request({ method: "eth_chainId" }), "chain id");
  }

  async blockNumber(): Promise<bigint> {
    return quantity(await this.client.request({ method: "eth_blockNumber" }), "block number");
  }

  async logs(address: string, topics: string[], from: bigint, to: bigint): Promise<ChainLog[]> {
    const out: ChainLog[] = [];
    for (let start = from; start <= to; start += this.logRange) {
      const end = start + this.logRange - 1n < to ? start + this.logRange - 1n : to;
      const raw = await this.client.request({
        method: "eth_getLogs",
        params: [
          {
            address: address as Hex,
            topics: topics as Hex[],
            fromBlock: `0x${start.toString(16)}`,
            toBlock: `0x${end.toString(16)}`,
          },
        ],
      });
      if (!Array.isArray(raw)) throw new ChainError("eth_getLogs did not return a list");
      for (const log of raw) {
        // a log removed by a reorg is not on the chain
        if ((log as { removed?: unknown }).removed === true) continue;
        out.push(toLog(log));
      }
    }
    return out;
  }

  async receipt(txHash: string): Promise<Receipt | null> {
    const raw = (await this.client.request({
      method: "eth_getTransactionReceipt",
      params: [txHash as Hex],
    })) as Record<string, unknown> | null;
    if (raw === null || raw === undefined) return null;
    if (raw["blockNumber"] === null || raw["blockNumber"] === undefined) return null;
    if (!Array.isArray(raw["logs"])) throw new ChainError("the node returned a receipt without logs");
    return {
      status: raw["status"] === undefined || raw["status"] === null ? null : quantity(raw["status"], "receipt status"),
      blockNumber: quantity(raw["blockNumber"], "receipt block number"),
      blockHash: data(raw["blockHash"], "receipt block hash"),
      to: raw["to"] === null || raw["to"] === undefined ? null : data(raw["to"], "receipt to"),
      gasUsed: quantity(raw["gasUsed"], "receipt gasUsed"),
      logs: (raw["logs"] as unknown[]).map(toLog),
    };
  }
}
