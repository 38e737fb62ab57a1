/**
 * A strict JSON (RFC 8259) parser that keeps every integer exact.
 *
 * JavaScript's `JSON.parse` turns every number into an IEEE double (so 2^64 silently becomes
 * 18446744073709551616 ± rounding) and keeps the last of two duplicate member names. Both would
 * let a verifier accept a text the spec calls non-canonical, so this parser is written by hand:
 *
 * - integers become `bigint`; numbers with a fraction or an exponent are refused, or, where the
 *   caller allows them (the bundle's informational members), kept as their text in a
 *   {@link JsonFraction} so that no check can mistake them for integers;
 * - duplicate member names are refused;
 * - objects are {@link JsonObject}s over a `Map` (no prototype keys such as `__proto__`);
 * - strings are JavaScript strings; a `\uD800` escape without its pair is kept as a lone
 *   surrogate (JSON allows it) and is for the caller to refuse;
 * - nesting depth is limited only by memory: the parser keeps its own stack instead of recursing.
 */

export class JsonObject {
  constructor(readonly members: Map<string, Json>) {}

  get(key: string): Json | undefined {
    return this.members.get(key);
  }

  has(key: string): boolean {
    return this.members.has(key);
  }

  keys(): string[] {
    return [...this.members.keys()];
  }
}

/** A JSON number with a fraction or an exponent, kept as its text (it has no LCE-1 encoding). */
export class JsonFraction {
  constructor(readonly text: string) {}
}

export type Json = null | boolean | bigint | string | Json[] | JsonObject | JsonFraction;

export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(`${message} at offset ${offset}`);
    this.name = "JsonSyntaxError";
  }
}

export interface ParseOptions {
  /** Keep numbers with a fraction or exponent as {@link JsonFraction} instead of refusing them. */
  allowFractions?: boolean;
}

type Frame = { kind: "array"; items: Json[] } | { kind: "object"; members: Map<string, Json>; key: string };

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const HEX4 = /^[0-9a-fA-F]{4}$/;

/** Parse `text` (one JSON value, optional surrounding whitespace) strictly. */
export function parseJson(text: string, options: ParseOptions = {}): Json {
  const allowFractions = options.allowFractions ?? false;
  const n = text.length;
  let i = 0;

  const fail = (message: string): never => {
    throw new JsonSyntaxError(message, i);
  };

  const skipWhitespace = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };

  const parseString = (): string => {
    // text[i] is the opening quote
    i++;
    let out = "";
    let start = i;
    for (;;) {
      if (i >= n) fail("unterminated string");
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        out += text.slice(start, i);
        i++;
        return out;
      }
      if (c < 0x20) fail("unescaped control character in string");
      if (c !== 0x5c) {
        i++;
        continue;
      }
      out += text.slice(start, i);
      const e = text[i + 1];
      switch (e) {
        case '"':
          out += '"';
          break;
        case "\\":
          out += "\\";
          break;
        case "/":
          out += "/";
          break;
        case "b":
          out += "\b";
          break;
        case "f":
          out += "\f";
          break;
        case "n":
          out += "\n";
          break;
        case "r":
          out += "\r";
          break;
        case "t":
          out += "\t";
          break;
        case "u": {
          const hex = text.slice(i + 2, i + 6);
          if (!HEX4.test(hex)) fail("bad \\u escape");
          out += String.fromCharCode(parseInt(hex, 16));
          i += 4;
          break;
        }
        default:
          fail("bad escape");
      }
      i += 2;
      start = i;
    }
  };

  const parseKey = (): string => {
    skipWhitespace();
    if (text[i] !== '"') fail("expected a member name");
    const key = parseString();
    skipWhitespace();
    if (text[i] !== ":") fail("expected ':'");
    i++;
    return key;
  };

  const parseScalar = (): Json => {
    const c = text[i];
    if (c === '"') return parseString();
    if (text.startsWith("true", i)) {
      i += 4;
      return true;
    }
    if (text.startsWith("false", i)) {
      i += 5;
      return false;
    }
    if (text.startsWith("null", i)) {
      i += 4;
      return null;
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (m === null) return fail("expected a value");
    const literal = m[0];
    if (m[1] !== undefined || m[2] !== undefined) {
      if (!allowFractions) fail("a number with a fraction or exponent");
      i += literal.length;
      return new JsonFraction(literal);
    }
    i += literal.length;
    return BigInt(literal);
  };

  const stack: Frame[] = [];
  for (;;) {
    skipWhitespace();
    let value: Json;
    const c = text[i];
    if (c === "{") {
      i++;
      skipWhitespace();
      if (text[i] === "}") {
        i++;
        value = new JsonObject(new Map());
      } else {
        stack.push({ kind: "object", members: new Map(), key: parseKey() });
        continue;
      }
    } else if (c === "[") {
      i++;
      skipWhitespace();
      if (text[i] === "]") {
        i++;
        value = [];
      } else {
        stack.push({ kind: "array", items: [] });
        continue;
      }
    } else {
      value = parseScalar();
    }
    // attach the finished value to its container; close containers while they end here
    for (;;) {
      const top = stack[stack.length - 1];
      if (top === undefined) {
        skipWhitespace();
        if (i !== n) fail("trailing characters");
        return value;
      }
      if (top.kind === "array") {
        top.items.push(value);
      } else {
        if (top.members.has(top.key)) fail(`duplicate member name ${JSON.stringify(top.key)}`);
        top.members.set(top.key, value);
      }
      skipWhitespace();
      const d = text[i];
      if (d === ",") {
        i++;
        if (top.kind === "object") top.key = parseKey();
        break;
      }
      if (d !== (top.kind === "array" ? "]" : "}")) fail("expected ',' or the end of the container");
      i++;
      stack.pop();
      value = top.kind === "array" ? top.items : new JsonObject(top.members);
    }
  }
}

/** True iff `s` is a sequence of Unicode scalar values (no lone surrogate). */
export function isWellFormed(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1);
      if (!(d >= 0xdc00 && d <= 0xdfff)) return false;
      i++;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      return false;
    }
  }
  return true;
}
