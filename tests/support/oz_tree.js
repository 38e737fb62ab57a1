// Reads a JSON list of value lists (0x-hex bytes32) on stdin; for each, builds
// @openzeppelin/merkle-tree's StandardMerkleTree with leaf encoding ["bytes32"] and prints its
// root, every value's proof and the node array. Used by tests/test_merkle.py.
'use strict';
const path = require('path');
const { StandardMerkleTree } = require(
  path.join(__dirname, '..', '..', 'contracts', 'node_modules', '@openzeppelin', 'merkle-tree'),
);

const sets = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = sets.map((values) => {
  const tree = StandardMerkleTree.of(values.map((v) => [v]), ['bytes32']);
  return {
    root: tree.root,
    proofs: values.map((_, i) => tree.getProof(i)),
    tree: tree.dump().tree,
    verified: values.every((v, i) => StandardMerkleTree.verify(tree.root, ['bytes32'], [v], tree.getProof(i))),
  };
});
process.stdout.write(JSON.stringify(out));
