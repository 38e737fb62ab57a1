/**
 * LCE-1, the canonical encoding of checkpoint spec section 2, written from its rules:
 * no whitespace; `null`/`true`/`false`; integers in plain decimal; strings with exactly the
 * escapes of rule 4 (lower-case `\u00xx` for the other C0 controls, nothing else escaped, no
 * surrogate-pair escapes); arrays in order; object members sorted by the UTF-8 bytes of their
 * keys (= code point order, not the UTF-16 order of JCS).
 *
 * The encoder keeps its own stack, like the parser, so no nesting depth overflows it.
 */

import { Json, JsonFraction, JsonObject, JsonSyntaxError, isWellFormed, parseJson } from "./json.js";

export class CanonicalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CanonicalError";
  }
}

const SHORT_ESCAPES: Record<number, string> = {
  0x22: '\\"',
  0x5c: "\\\\",
  0x08: "\\b",
  0x09: "\\t",
  0x0a: "\\n",
  0x0c: "\\f",
  0x0d: "\\r",
};

const NEEDS_ESCAPE = /["\\\u0000-\u001f]/;

function encodeString(s: string): string {
  if (!isWellFormed(s)) throw new CanonicalError("a string with a lone surrogate has no encoding");
  if (!NEEDS_ESCAPE.test(s)) return `"${s}"`;
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const short = SHORT_ESCAPES[c];
    if (short !== undefined) out += short;
    else if (c < 0x20) out += "\\u00" + c.toString(16).padStart(2, "0");
    else out += s[i];
  }
  return out + '"';
}

/** Compare two well-formed strings by code points (= by their UTF-8 bytes). */
function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // Code units order like code points except that surrogates (0xD800-0xDFFF, which encode
    // U+10000 and above) must sort after 0xE000-0xFFFF.
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

class Literal {
  constructor(readonly text: string) {}
}

/** LCE-1 text of `value` as a JavaScript string (its UTF-8 bytes are the encoding). */
export function lceText(value: Json): string {
  const out: string[] = [];
  const work: (Json | Literal)[] = [value];
  while (work.length > 0) {
    const v = work.pop() as Json | Literal;
    if (v instanceof Literal) out.push(v.text);
    else if (v === null) out.push("null");
    else if (v === true) out.push("true");
    else if (v === false) out.push("false");
    else if (typeof v === "bigint") out.push(v.toString(10));
    else if (typeof v === "string") out.push(encodeString(v));
    else if (v instanceof JsonFraction) throw new CanonicalError(`a fraction (${v.text}) has no encoding`);
    else if (Array.isArray(v)) {
      out.push("[");
      work.push(new Literal("]"));
      for (let k = v.length - 1; k >= 0; k--) {
        work.push(v[k] as Json);
        if (k > 0) work.push(new Literal(","));
      }
    } else if (v instanceof JsonObject) {
      const keys = v.keys();
      const encodedKeys = new Map(keys.map((key) => [key, encodeString(key)]));
      keys.sort(compareCodePoints);
      out.push("{");
      work.push(new Literal("}"));
      for (let k = keys.length - 1; k >= 0; k--) {
        const key = keys[k] as string;
        work.push(v.get(key) as Json);
        work.push(new Literal(encodedKeys.get(key) + ":"));
        if (k > 0) work.push(new Literal(","));
      }
    } else {
      throw new CanonicalError("a value outside the LCE-1 data model");
    }
  }
  return out.join("");
}

const utf8 = new TextEncoder();

/** LCE-1 bytes of `value`. */
export function lce(value: Json): Uint8Array {
  return utf8.encode(lceText(value));
}

export type CanonicalResult = { ok: true; value: Json } | { ok: false; reason: string };

/**
 * Whether `text` (a preimage, already known to be well-formed Unicode) is canonical LCE-1:
 * parsed with exact integers, no duplicate names, no fractions or exponents, and encoded again,
 * it must give the same text (spec section 10.3, step 4).
 */
export function parseCanonical(text: string): CanonicalResult {
  let value: Json;
  try {
    value = parseJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) return { ok: false, reason: `not strict JSON: ${e.message}` };
    throw e;
  }
  let again: string;
  try {
    again = lceText(value);
  } catch (e) {
    if (e instanceof CanonicalError) return { ok: false, reason: e.message };
    throw e;
  }
  if (again !== text) return { ok: false, reason: "not canonical LCE-1 (encoding it again gives other bytes)" };
  return { ok: true, value };
}

/** Build a JSON object from plain entries (for the values the verifier hashes itself). */
export function obj(entries: Record<string, Json>): JsonObject {
  return new JsonObject(new Map(Object.entries(entries)));
}
