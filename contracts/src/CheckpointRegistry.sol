// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title CheckpointRegistry
/// @notice Append-only hash chains of workflow steps, one per run, and anchored Merkle roots of
/// step batches. Only hashes live here; the preimages stay off-chain (docs/checkpoint-spec.md).
/// @dev Per-step mode: `head_n = keccak256(head_{n-1} || stepHash_n)` with `head_0 = run`.
/// Batched mode: leaves are `keccak256(0x00 || stepHash)`, internal nodes OpenZeppelin's sorted
/// pair hash, so a leaf (33 bytes hashed) can never be confused with a node (64 bytes hashed).
contract CheckpointRegistry is AccessControl {
    /// @notice Role allowed to append steps and anchor roots (the orchestrator's signer).
    bytes32 public constant WRITER_ROLE = keccak256("WRITER_ROLE");

    /// @notice On-chain state of one run: its current head and how many steps it has.
    struct RunState {
        bytes32 head;
        uint64 steps;
    }

    mapping(bytes32 run => RunState) private _runs;
    /// @dev Block number at which a root was anchored; 0 means never. One slot per root.
    mapping(bytes32 root => uint64 blockNumber) private _anchoredAt;

    /// @notice A step was appended to a run's chain.
    event Checkpointed(bytes32 indexed run, uint64 indexed seq, bytes32 stepHash, bytes32 head);
    /// @notice A Merkle root of `leafCount` step leaves was anchored.
    event RootAnchored(bytes32 indexed root, uint32 leafCount);

    /// @notice `prev` is not the run's current head (or the run id for its first step).
    error CheckpointPrevMismatch(bytes32 expected, bytes32 got);
    /// @notice `seq` is not the run's step count (a repeated or skipped step).
    error CheckpointSeqMismatch(uint64 expected, uint64 got);
    /// @notice The root was anchored before.
    error CheckpointRootAlreadyAnchored(bytes32 root);
    /// @notice The zero root cannot be anchored.
    error CheckpointEmptyRoot();

    /// @notice The deployer becomes the admin; writers are granted explicitly.
    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Append step `seq` of `run`, chaining it onto `prev`.
    /// @param run The run key, which is also the genesis head.
    /// @param seq The step's index; must equal the run's current step count.
    /// @param prev The head the step was computed on; must equal the stored head.
    /// @param stepHash keccak256 of the step record's canonical encoding.
    /// @return head The new head, keccak256(prev || stepHash).
    function checkpoint(bytes32 run, uint64 seq, bytes32 prev, bytes32 stepHash)
        external
        onlyRole(WRITER_ROLE)
        returns (bytes32 head)
    {
        RunState storage state = _runs[run];
        uint64 steps = state.steps;
        if (seq != steps) revert CheckpointSeqMismatch(steps, seq);
        bytes32 expected = steps == 0 ? run : state.head;
        if (prev != expected) revert CheckpointPrevMismatch(expected, prev);

        head = keccak256(abi.encodePacked(prev, stepHash));
        state.head = head;
        state.steps = steps + 1;
        emit Checkpointed(run, seq, stepHash, head);
    }

    /// @notice The current head of `run` and its step count.
    /// @param run The run key.
    /// @return head The run's head; `run` itself while it has no steps.
    /// @return steps The number of steps appended so far.
    function headOf(bytes32 run) external view returns (bytes32 head, uint64 steps) {
        RunState storage state = _runs[run];
        steps = state.steps;
        head = steps == 0 ? run : state.head;
    }

    /// @notice Anchor the Merkle root of a batch of step leaves. Each root can be anchored once.
    /// @dev Kept to one storage write and one event: this is paid once per batch.
    /// @param root The Merkle root (sorted-pair keccak256 over `keccak256(0x00 || stepHash)` leaves).
    /// @param leafCount How many leaves the tree has (informational, for indexers).
    function anchorRoot(bytes32 root, uint32 leafCount) external onlyRole(WRITER_ROLE) {
        if (root == bytes32(0)) revert CheckpointEmptyRoot();
        if (_anchoredAt[root] != 0) revert CheckpointRootAlreadyAnchored(root);
        _anchoredAt[root] = uint64(block.number);
        emit RootAnchored(root, leafCount);
    }

    /// @notice The block number at which `root` was anchored.
    /// @param root The Merkle root.
    /// @return The block number, or 0 if the root was never anchored.
    function anchoredAt(bytes32 root) external view returns (uint64) {
        return _anchoredAt[root];
    }

    /// @notice Whether `stepHash` is a leaf of the anchored tree `root`.
    /// @param root An anchored Merkle root.
    /// @param stepHash The step hash whose leaf is keccak256(0x00 || stepHash).
    /// @param proof The sibling hashes from the leaf up to the root.
    /// @return True iff `root` is anchored and the proof is valid.
    function verifyStep(bytes32 root, bytes32 stepHash, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        if (_anchoredAt[root] == 0) return false;
        bytes32 leaf = keccak256(abi.encodePacked(bytes1(0x00), stepHash));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }
}
