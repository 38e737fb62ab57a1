"""Chain access: contract artifacts, deployment, the signer with its nonce manager, reverts."""
