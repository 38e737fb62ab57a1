"""The checkpoint core: canonical encoding, step records, Merkle trees, proofs, verify, anchors."""
