"""Content provenance: identities (``did:pkh``), signed provenance claims, their public
registration on chain, the lookup a third party does with only a file, and C2PA content
credentials."""
