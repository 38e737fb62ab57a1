/**
 * The test vectors of checkpoint spec section 14, recomputed by this verifier's own code, plus
 * the LCE-1 and strict-parsing rules of section 2 that the vectors do not reach.
 */

import { strict as assert } from "node:assert";
import { test } from "node:test";

import { StandardMerkleTree } from "@openzeppelin/merkle-tree";

import { JsonObject, JsonSyntaxError, parseJson, type Json } from "../json.js";
import { CanonicalError, lce, lceText, obj, parseCanonical } from "../lce.js";
import {
  TOPIC,
  bytes,
  commitment,
  hex,
  keccak,
  leafV1,
  leafV2,
  nextHead,
  proofReachesRoot,
  runKey,
  stepHash,
} from "../spec.js";

const W = "procurement-demo-1";
const R = "2f1c7a52-8d2b-4c1e-9a3f-0b6e5d4c3b2a";
const utf8 = new TextEncoder();
const repeat = (byte: number): Uint8Array => new Uint8Array(32).fill(byte);

test("keccak256 is Keccak, not SHA3", () => {
  assert.equal(hex(keccak(new Uint8Array())), "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
});

test("14.1 LCE-1 vectors", () => {
  const cases: [string, Json, string, string][] = [
    [
      "nesting",
      obj({
        b: 1n,
        a: [true, false, null],
        c: obj({ z: "", y: -12n }),
        "": [],
        d: obj({}),
      }),
      "7b22223a5b5d2c2261223a5b747275652c66616c73652c6e756c6c5d2c2262223a312c2263223a7b2279223a2d31322c227a223a22227d2c2264223a7b7d7d",
      "0xdca23758598d0af80dff97f37f80437fbac018ee17c422069b30fd090c3e512c",
    ],
    [
      "unicode",
      "héllo ☃ 𝄞",
      "2268c3a96c6c6f20e2988320f09d849e22",
      "0xd1e9e5dfd04e752942d1901401a1e1c2d6c44d94f2d230a4be3eb4a5e614a58f",
    ],
    [
      "escapes",
      'q"b\\n\n\t\r\b\f\x00\x1f\x7f/</',
      "22715c22625c5c6e5c6e5c745c725c625c665c75303030305c75303031667f2f3c2f22",
      "0x9681a0727422886f78792df8a1deb84150475d0eb222cbbad5ee790a54ec67b5",
    ],
    [
      "keys",
      obj({ é: 1n, z: 2n, Z: 3n, a: 4n, ab: 5n, ÿ: 6n, "\ue000": 7n, "😀": 8n, "": 9n }),
      "7b22223a392c225a223a332c2261223a342c226162223a352c227a223a322c22c3a9223a312c22c3bf223a362c22ee8080223a372c22f09f9880223a387d",
      "0xc3794b67904f236a2cb2981aeb14ba7d26fd0a9d6ddab517832ead2c5b0fac85",
    ],
    [
      "ints",
      [0n, -1n, 2n ** 64n, -(2n ** 64n) - 1n, 2n ** 256n - 1n],
      "5b302c2d312c31383434363734343037333730393535313631362c2d31383434363734343037333730393535313631372c3131353739323038393233373331363139353432333537303938353030383638373930373835333236393938343636353634303536343033393435373538343030373931333132393633393933355d",
      "0xa191c865e00d5c10570cf20c1e35a3eb8df9311d6d6cc3ddd2d78a99d347416c",
    ],
  ];
  for (const [name, value, bytesHex, digest] of cases) {
    const encoded = lce(value);
    assert.equal(Buffer.from(encoded).toString("hex"), bytesHex, name);
    assert.equal(hex(keccak(encoded)), digest, name);
    // idempotent on its own output (section 2.2)
    const again = parseCanonical(lceText(value));
    assert.ok(again.ok, name);
  }
});

test("LCE-1 has no encoding for fractions or lone surrogates", () => {
  assert.throws(() => lce(parseJson("1.0", { allowFractions: true })), CanonicalError);
  assert.throws(() => lce("\ud800"), CanonicalError);
  assert.throws(() => lce(obj({ "\udc00": 1n })), CanonicalError);
});

test("strict parsing: exact integers, no duplicates, no fractions", () => {
  assert.equal(parseJson("18446744073709551617"), 18446744073709551617n);
  assert.equal(
    parseJson("-115792089237316195423570985008687907853269984665640564039457584007913129639935"),
    -(2n ** 256n - 1n),
  );
  for (const bad of [
    '{"a":1,"a":2}',
    "1.5",
    "1e3",
    "01",
    "[1,]",
    "{'a':1}",
    '"\u0001"',
    "tru",
    "[1] x",
    "+1",
    "NaN",
    "",
  ]) {
    assert.throws(() => parseJson(bad), JsonSyntaxError, bad);
  }
  // deep nesting does not overflow the stack
  const deep = "[".repeat(200_000) + "]".repeat(200_000);
  assert.equal(lceText(parseJson(deep)), deep);
});

test("canonical check of preimages (section 10.3 step 4)", () => {
  assert.ok(parseCanonical('{"a":[1,"x"],"b":null}').ok);
  for (const bad of [
    '{"b":1,"a":2}', // order
    '{"a": 1}', // whitespace
    '"\\u00e9"', // an escape LCE-1 does not use
    '"\\/"',
    '"\\u001F"', // upper-case hex
    "-0",
    "1.0",
    '{"a":1,"a":1}',
    '"\\ud83d\\ude00"', // surrogate-pair escape
  ]) {
    assert.equal(parseCanonical(bad).ok, false, bad);
  }
  assert.ok(parseCanonical('"\\u001f"').ok);
  assert.ok(parseCanonical('"😀\u007f/\u2028"').ok);
});

test("14.2 run key", () => {
  assert.equal(hex(runKey(2, W, R)), "0x28c604edc969299f3a1ba4d572b3c8037eb2f4dd4f3152a3930b7a7b78e575db");
  assert.equal(hex(runKey(1, W, R)), "0x34c7b86a0bcf4bc51158341ece61ba1e69680665851eb250414e4db4486a18a3");
});

const TX =
  '{"already_done":false,"block_hash":"0xcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd","block_number":42,"event":{"address":"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512","log_index":0,"topics":["0x1111111111111111111111111111111111111111111111111111111111111111","0x2222222222222222222222222222222222222222222222222222222222222222"]},"gas_used":120000,"to":"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512","tx_hash":"0xabababababababababababababababababababababababababababababababab"}';

function record(
  v: number,
  run: Uint8Array,
  seq: number,
  kind: string,
  name: string,
  input: Uint8Array,
  output: Uint8Array,
  status: string,
  prev: Uint8Array,
): JsonObject {
  return obj({
    v: BigInt(v),
    run: hex(run),
    seq: BigInt(seq),
    kind,
    name,
    input: hex(input),
    output: hex(output),
    status,
    prev: hex(prev),
  });
}

test("14.3 a four-step version 2 run", () => {
  const steps: [string, string, string, string, string][] = [
    ["llm", "decide_supplier", '{"qty":3,"sku":"A-100"}', '{"supplier":"acme","unit_price":1250}', "ok"],
    ["chain", "escrow.open", '{"amount":3750,"order":"PO-7"}', TX, "ok"],
    [
      "activity",
      "notify_supplier",
      '{"to":"acme"}',
      '{"error":{"message":"no answer in 30 s","type":"TimeoutError"}}',
      "failed",
    ],
    [
      "outcome",
      "run.outcome",
      '{"status":"completed","workflow_type":"ProcurementWorkflow"}',
      '{"outcome":"completed","reason":""}',
      "ok",
    ],
  ];
  const commitments = [
    [
      "0xe5423e2ea8891b5435feee0c284c55fc7bce8378f413a9910b13cd59a85a0cda",
      "0x0fa37790be5fa74549015c68cfe23c5255247a71897081dd3a055b7c7b5d467f",
    ],
    [
      "0x9383b69dec5e101c4550af8544736810b6c56ad4c7c03ef45e7e7520278c2b6c",
      "0x09da94a98aba8547099dc63adbcbdc17c52c0ced6dea9f6182ec99a42cd95435",
    ],
    [
      "0x2550e9dc94a7b48c20439e7f8e4c611e4a2afb145809b83cf2ce8878dedfaef1",
      "0x3797bd73106966f2d714306297c9cdcc24c3ae2e567d658f33417923589a6236",
    ],
    [
      "0xdc52b27ce34d3ea36767dc33b03739080088f9a08a6b94ccce3067fc9b9b969c",
      "0xc3e0bc7c86cbed7376fe285629da3ad5720bcbbb28f3de4bd1c93fcf59f301c9",
    ],
  ];
  const expected = [
    [
      "0x66bdf1e2b66403c19ee90d384611060b6db22dba6690f09196b9dff7b71093c0",
      "0x7ee9f53f6625ceb171410562cf0928a171ad957941c2743d34f5d408957e176d",
      "0xc20a4946f6c1605dc7d3109ddd854f2940ce453c2ccd7e8281bf159d0c8c9bb6",
    ],
    [
      "0x2465d32b1284674f2e83cd25065cdd3583a823f2a924d75bf1974f6d3ce65b18",
      "0x1c7e3b57d7e9b8cf60a47c7225e60a6dda5fe8b13106001cc0a07454cb9a807d",
      "0xa2aeacb7dbc80dca61da99a41bc318c35060d546008e277622c15aca25714fd1",
    ],
    [
      "0xfba6cf22209526d1a6270c1b4d81f5f541e915a7edfab59c8d73a7428b8dc06f",
      "0x6140611dd728dce16d8c223f886b0debcc631b80043bd24c15d6e315614a1bd6",
      "0x08dc0f7e80791cd594f97987b728b23942cf4b7e37464b80435fbe77044c7c48",
    ],
    [
      "0x7363728cbcbcde9f5525e78d97a38609b095c1ec09b03953fbb51f4d2c1e868f",
      "0x6297bbb13fd68dfaa3c9d9dbc279b41acf6afd0ad913c5879875588a116e5b17",
      "0x601bb862af862aa3ee036bb761f735adc3a0d3ecec525d483cdb985f18ab58b6",
    ],
  ];
  const run = runKey(2, W, R);
  let head = run;
  const hashes: string[] = [];
  steps.forEach(([kind, name, pin, pout, status], s) => {
    assert.ok(parseCanonical(pin).ok && parseCanonical(pout).ok);
    const cin = commitment(repeat(2 * s + 1), utf8.encode(pin));
    const cout = commitment(repeat(2 * s + 2), utf8.encode(pout));
    assert.deepEqual([hex(cin), hex(cout)], commitments[s]);
    const rec = record(2, run, s, kind, name, cin, cout, status, head);
    if (s === 0) {
      assert.equal(
        lceText(rec),
        '{"input":"0xe5423e2ea8891b5435feee0c284c55fc7bce8378f413a9910b13cd59a85a0cda","kind":"llm","name":"decide_supplier","output":"0x0fa37790be5fa74549015c68cfe23c5255247a71897081dd3a055b7c7b5d467f","prev":"0x28c604edc969299f3a1ba4d572b3c8037eb2f4dd4f3152a3930b7a7b78e575db","run":"0x28c604edc969299f3a1ba4d572b3c8037eb2f4dd4f3152a3930b7a7b78e575db","seq":0,"status":"ok","v":2}',
      );
    }
    const sh = stepHash(rec);
    head = nextHead(head, sh);
    assert.deepEqual([hex(sh), hex(head), hex(leafV2(sh))], expected[s]);
    hashes.push(hex(sh));
  });
  // the tree, built by @openzeppelin/merkle-tree itself
  const tree = StandardMerkleTree.of(
    hashes.map((h) => [h]),
    ["bytes32"],
  );
  const root = "0x2d4336420a64dce2821a5a9e4a030ffd5ba7ac71e36b0cac2e45bd8c11f95e72";
  assert.equal(tree.root, root);
  const proofs = [
    [
      "0xa2aeacb7dbc80dca61da99a41bc318c35060d546008e277622c15aca25714fd1",
      "0xa9c52ffe063b7a1dcdc1d144de23586ab8cda7cc5f85035f5e04fd2e8ec0827e",
    ],
    [
      "0xc20a4946f6c1605dc7d3109ddd854f2940ce453c2ccd7e8281bf159d0c8c9bb6",
      "0xa9c52ffe063b7a1dcdc1d144de23586ab8cda7cc5f85035f5e04fd2e8ec0827e",
    ],
    [
      "0x601bb862af862aa3ee036bb761f735adc3a0d3ecec525d483cdb985f18ab58b6",
      "0xa83570bd1532631db52c044ca1f0eb4786b20ae7364e85845b4d08dbc0defff2",
    ],
    [
      "0x08dc0f7e80791cd594f97987b728b23942cf4b7e37464b80435fbe77044c7c48",
      "0xa83570bd1532631db52c044ca1f0eb4786b20ae7364e85845b4d08dbc0defff2",
    ],
  ];
  hashes.forEach((h, p) => {
    assert.deepEqual(tree.getProof(p), proofs[p]);
    assert.ok(proofReachesRoot(2, bytes(h), proofs[p] as string[], root));
    const forged = [...(proofs[p] as string[])];
    forged[0] = hex(keccak(bytes(forged[0] as string)));
    assert.equal(proofReachesRoot(2, bytes(h), forged, root), false);
  });
  assert.equal(hex(head), "0x6297bbb13fd68dfaa3c9d9dbc279b41acf6afd0ad913c5879875588a116e5b17");
});

test("14.4 a five-value StandardMerkleTree", () => {
  const values = [0, 1, 2, 3, 4].map((i) => hex(keccak(new Uint8Array([i]))));
  const tree = StandardMerkleTree.of(
    values.map((v) => [v]),
    ["bytes32"],
  );
  assert.equal(tree.root, "0x7ca574343c8c38aed5aee8931390586a935272ef389f5b656f1af1ecc0450d9a");
  const leaves = values.map((v) => hex(leafV2(bytes(v))));
  assert.deepEqual(leaves, [
    "0x357a815b6fffc3f38b08de8f1e754bef7d52acc551d7b5cd58b4634854fe674c",
    "0x534afc8420bab6c013a3e42dc77ef141e8f16ee0206928dd007663e9c85068dd",
    "0x0b090781db9a05f5e751796e8ded776250a18f7606440b133a9e0656897175d5",
    "0x84d4332c3d26f7719582a2ae02a734055d18f3991a1339235c12ed9770d2ae1d",
    "0x7a7790fd86a12f320f509d5b3d12a21ba4309ca44ccf92acf57a3e9f2052d604",
  ]);
  values.forEach((v, p) => assert.ok(proofReachesRoot(2, bytes(v), tree.getProof(p), tree.root)));
  assert.equal(tree.getProof(1).length, 2);
  assert.equal(tree.getProof(0).length, 3);
});

test("14.5 topics", () => {
  assert.equal(TOPIC.RunSealed, "0xd7f82339b23106d0e6b054a49a1caff2f03de5e5bdf47d466d30b48fabb4c3d8");
  assert.equal(TOPIC.Checkpointed, "0xa12dfe9830f8f73b7919eb61d98491bdfdf6fc540e3bc820db7939c346e26298");
  assert.equal(TOPIC.RootAnchored, "0xc29adcd0845ee582e2fd2c72c9eb59b04c906cfbff492932739ea2dfac6e76b9");
});

test("14.6 version 1: records, head, leaves and the five-leaf proofs", () => {
  const run = runKey(1, W, R);
  const steps: [string, string, string, string, string][] = [
    ["llm", "decide_supplier", '{"qty":3,"sku":"A-100"}', '{"supplier":"acme","unit_price":1250}', "ok"],
    ["chain", "escrow.deposit", '{"amount":3750,"order":"PO-7"}', `{"tx":"0x${"ab".repeat(32)}"}`, "ok"],
    [
      "activity",
      "notify_supplier",
      '{"to":"acme"}',
      '{"error":{"message":"no answer in 30 s","type":"TimeoutError"}}',
      "failed",
    ],
  ];
  const expected = [
    [
      "0x462d3f91c311e38031a0ec39b046b55db2ca7ccfe8a5e48a1556ba80f597940c",
      "0x5ccacfc32a830d61634013f8c1a3d5ca581c13b5ca9c821bcc3524ebbbb534e3",
    ],
    [
      "0x6445b47708f05ac1eacfaa49f58fa51a6890d4c98c23a9d7954b1bc457839a4d",
      "0x3fa64a1371e4205c6bc07906013422d3f123754009d17db60d82fdb2d408129f",
    ],
    [
      "0xe709d4858497fa898544fa45a195489099dc0e786d046c5d0485199eb4b3e579",
      "0xe15c9f993eec54c6b0b8d7b90e11fd4ce54825cabd6a923277e337650a52c7b2",
    ],
  ];
  let head = run;
  steps.forEach(([kind, name, pin, pout, status], s) => {
    const rec = record(
      1,
      run,
      s,
      kind,
      name,
      commitment(null, utf8.encode(pin)),
      commitment(null, utf8.encode(pout)),
      status,
      head,
    );
    const sh = stepHash(rec);
    assert.deepEqual([hex(sh), hex(leafV1(sh))], expected[s]);
    head = nextHead(head, sh);
  });
  assert.equal(hex(head), "0x73722a132a753fa85549dbf9ee776d2b42cc44405108003bb951539af43cb847");

  const s = [0, 1, 2, 3, 4].map((i) => keccak(new Uint8Array([i])));
  const L = s.map((x) => hex(leafV1(x)));
  const N01 = "0xafed3f608f7160caa68b823acb6424b8f928d3443ef786be93ef12784959a4a2";
  const N23 = "0xdb84fcb0c5f05f44352e8c63a254fc4902c191513d0823ca0cd29e59128a312f";
  const N0123 = "0xea259944eccea8ea1aea5d0bb9341b17400ee2322d3aa9b30efbb5247903e42a";
  const root = "0xf3a91c10a2a1090a776f6d4aad32f4af6b6c251a63ce0c7ba674fd4f6120d720";
  const proofs = [[L[1], N23, L[4]], [L[0], N23, L[4]], [L[3], N01, L[4]], [L[2], N01, L[4]], [N0123]] as string[][];
  s.forEach((x, i) => assert.ok(proofReachesRoot(1, x, proofs[i] as string[], root), `leaf ${i}`));
  // a version 1 proof does not pass as version 2, nor the other way round
  assert.equal(proofReachesRoot(2, s[0] as Uint8Array, proofs[0] as string[], root), false);
});
