// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title ProvenanceRegistry
/// @notice Public registrations of content: who claims what about a content hash, signed by an
/// agent key and tied to the checkpointed step that recorded the claim (docs/checkpoint-spec.md,
/// "Provenance claims"). A third party holding only a file hashes it and asks `eth_getLogs` for
/// `ContentRegistered` with that hash as the first topic.
/// @dev The claim's canonical JSON travels in the event, so its EIP-712 digest (`claimHash`)
/// can be recomputed from the chain alone; the registry only checks that `agent` signed
/// `claimHash`. Each registration carries an idempotency key from the run and the step, refused
/// twice, so a retried transaction registers once.
contract ProvenanceRegistry is AccessControl {
    /// @notice Role allowed to register content (the orchestrator's signer).
    bytes32 public constant ORCHESTRATOR_ROLE = keccak256("ORCHESTRATOR_ROLE");

    mapping(bytes32 key => bool) private _used;
    mapping(bytes32 contentHash => uint256) private _count;

    /// @notice Content was registered with a claim signed by `agent`.
    event ContentRegistered(
        bytes32 indexed contentHash,
        bytes32 claimHash,
        address agent,
        bytes32 stepHash,
        bytes32 key,
        string claim,
        bytes signature
    );

    /// @notice The idempotency key was used by an earlier registration.
    error ProvenanceAlreadyRegistered(bytes32 key);
    /// @notice The signature over `claimHash` is not `agent`'s.
    error ProvenanceBadSignature(address agent, address recovered);
    /// @notice The zero content hash cannot be registered.
    error ProvenanceEmptyContent();

    /// @notice The deployer becomes the admin; orchestrators are granted explicitly.
    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Register `contentHash` with the claim `claim` whose EIP-712 digest is `claimHash`.
    /// @param contentHash keccak256 of the canonical text or of the file's bytes.
    /// @param claimHash The EIP-712 digest of the claim (what `agent` signed).
    /// @param stepHash The step hash of the checkpointed step that recorded the claim.
    /// @param key The idempotency key (derived from the run and the step).
    /// @param agent The agent whose key signed the claim.
    /// @param claim The claim's canonical JSON (the preimage of `claimHash`'s message).
    /// @param signature The agent's 65-byte signature over `claimHash`.
    function register(
        bytes32 contentHash,
        bytes32 claimHash,
        bytes32 stepHash,
        bytes32 key,
        address agent,
        string calldata claim,
        bytes calldata signature
    ) external onlyRole(ORCHESTRATOR_ROLE) {
        if (contentHash == bytes32(0)) revert ProvenanceEmptyContent();
        if (_used[key]) revert ProvenanceAlreadyRegistered(key);
        // A malformed or high-s signature reverts in ECDSA (ECDSAInvalidSignature...).
        address recovered = ECDSA.recover(claimHash, signature);
        if (recovered != agent) revert ProvenanceBadSignature(agent, recovered);
        _used[key] = true;
        _count[contentHash] += 1;
        emit ContentRegistered(contentHash, claimHash, agent, stepHash, key, claim, signature);
    }

    /// @notice Whether `key` was used by a registration.
    function isUsed(bytes32 key) external view returns (bool) {
        return _used[key];
    }

    /// @notice How many registrations name `contentHash`.
    function registrations(bytes32 contentHash) external view returns (uint256) {
        return _count[contentHash];
    }
}
