"""Content provenance: identities (``did:pkh``), signed provenance claims, their public
registration on chain and the lookup a third party does with only a file."""
