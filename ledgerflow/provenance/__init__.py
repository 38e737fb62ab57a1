"""Content provenance: who registered a piece of content, from what, and where it is anchored."""
