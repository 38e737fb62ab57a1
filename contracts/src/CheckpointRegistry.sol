// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title CheckpointRegistry (checkpoint spec version 2)
/// @notice Append-only hash chains of workflow steps, one per run, anchored Merkle roots of step
/// batches, and one seal per ended run. Only hashes live here; the preimages stay off-chain
/// (docs/checkpoint-spec.md).
/// @dev Per-step mode: `head_{s+1} = keccak256(head_s || stepHash_s)` with `head_0 = run`, kept
/// here per run and sealed by `sealRun`. Batched mode: roots of OpenZeppelin `StandardMerkleTree`s
/// with leaf encoding `["bytes32"]` over `[stepHash]`, so a leaf is
/// `keccak256(keccak256(abi.encode(stepHash)))` (64 bytes hashed twice can never be confused with
/// an internal node), internal nodes OpenZeppelin's sorted pair hash; seals of the runs that ended
/// in the batch are events of the same transaction. Verifiers require exactly one `RunSealed` per
/// run key in this registry's logs: the writer can emit a second one, but never silently.
contract CheckpointRegistry is AccessControl {
    /// @notice Role allowed to append steps, seal runs and anchor roots (the orchestrator's signer).
    bytes32 public constant WRITER_ROLE = keccak256("WRITER_ROLE");

    /// @notice The seal of an ended run: how many steps it has and its final head.
    struct Seal {
        bytes32 run;
        uint64 steps;
        bytes32 head;
    }

    /// @dev On-chain state of one per-step run. `steps` and `isSealed` share one slot.
    struct RunState {
        bytes32 head;
        uint64 steps;
        bool isSealed;
    }

    mapping(bytes32 run => RunState) private _runs;
    /// @dev Block number at which a root was anchored; 0 means never. One slot per root.
    mapping(bytes32 root => uint64 blockNumber) private _anchoredAt;

    /// @notice A step was appended to a run's chain.
    event Checkpointed(bytes32 indexed run, uint64 indexed seq, bytes32 stepHash, bytes32 head);
    /// @notice A Merkle root of `leafCount` step leaves was anchored.
    event RootAnchored(bytes32 indexed root, uint32 leafCount);
    /// @notice A run ended with `steps` steps and final head `head`.
    event RunSealed(bytes32 indexed run, uint64 steps, bytes32 head);

    /// @notice `prev` is not the run's current head (or the run id for its first step).
    error CheckpointPrevMismatch(bytes32 expected, bytes32 got);
    /// @notice `seq` is not the run's step count (a repeated or skipped step).
    error CheckpointSeqMismatch(uint64 expected, uint64 got);
    /// @notice The root was anchored before.
    error CheckpointRootAlreadyAnchored(bytes32 root);
    /// @notice The zero root cannot be anchored.
    error CheckpointEmptyRoot();
    /// @notice The run is sealed: it takes no further step and no second seal.
    error CheckpointRunSealed(bytes32 run);
    /// @notice A per-step seal does not match the run's on-chain step count and head.
    error CheckpointSealMismatch(
        bytes32 run, uint64 expectedSteps, uint64 steps, bytes32 expectedHead, bytes32 head
    );
    /// @notice A seal must commit at least one step (every v2 run ends with its outcome step).
    error CheckpointEmptySeal(bytes32 run);

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
        if (state.isSealed) revert CheckpointRunSealed(run);
        if (seq != steps) revert CheckpointSeqMismatch(steps, seq);
        bytes32 expected = steps == 0 ? run : state.head;
        if (prev != expected) revert CheckpointPrevMismatch(expected, prev);

        head = keccak256(abi.encodePacked(prev, stepHash));
        state.head = head;
        state.steps = steps + 1;
        emit Checkpointed(run, seq, stepHash, head);
    }

    /// @notice Seal a per-step run: no step can be appended after this, and it is sealed once.
    /// @dev `steps` and `head` must equal the registry's own state of the run, so the seal commits
    /// exactly what was checkpointed here.
    /// @param run The run key.
    /// @param steps The run's step count; must equal the number of steps checkpointed.
    /// @param head The run's final head; must equal the stored head.
    function sealRun(bytes32 run, uint64 steps, bytes32 head) external onlyRole(WRITER_ROLE) {
        RunState storage state = _runs[run];
        if (state.isSealed) revert CheckpointRunSealed(run);
        if (steps == 0) revert CheckpointEmptySeal(run);
        uint64 expectedSteps = state.steps;
        bytes32 expectedHead = expectedSteps == 0 ? run : state.head;
        if (steps != expectedSteps || head != expectedHead) {
            revert CheckpointSealMismatch(run, expectedSteps, steps, expectedHead, head);
        }
        state.isSealed = true;
        emit RunSealed(run, steps, head);
    }

    /// @notice The current head of `run`, its step count and whether it is sealed (per-step mode).
    /// @param run The run key.
    /// @return head The run's head; `run` itself while it has no steps.
    /// @return steps The number of steps appended so far.
    /// @return isSealed Whether `sealRun` sealed the run (batched seals are events only).
    function headOf(bytes32 run) external view returns (bytes32 head, uint64 steps, bool isSealed) {
        RunState storage state = _runs[run];
        steps = state.steps;
        isSealed = state.isSealed;
        head = steps == 0 ? run : state.head;
    }

    /// @notice Anchor the Merkle root of a batch of step leaves, with the seals of the runs that
    /// ended in the batch. Each root can be anchored once.
    /// @dev One storage write per batch; the seals are events only (`RunSealed` after
    /// `RootAnchored`, in the order given), so a seal costs a log, not a slot.
    /// @param root The root of a `StandardMerkleTree` (encoding `["bytes32"]`) of step hashes.
    /// @param leafCount How many leaves the tree has (informational, for indexers).
    /// @param seals The seals of runs whose last step is in this batch or an earlier one.
    function anchorRoot(bytes32 root, uint32 leafCount, Seal[] calldata seals)
        external
        onlyRole(WRITER_ROLE)
    {
        if (root == bytes32(0)) revert CheckpointEmptyRoot();
        if (_anchoredAt[root] != 0) revert CheckpointRootAlreadyAnchored(root);
        _anchoredAt[root] = uint64(block.number);
        emit RootAnchored(root, leafCount);
        for (uint256 i = 0; i < seals.length; ++i) {
            Seal calldata s = seals[i];
            if (s.steps == 0) revert CheckpointEmptySeal(s.run);
            emit RunSealed(s.run, s.steps, s.head);
        }
    }

    /// @notice The block number at which `root` was anchored.
    /// @param root The Merkle root.
    /// @return The block number, or 0 if the root was never anchored.
    function anchoredAt(bytes32 root) external view returns (uint64) {
        return _anchoredAt[root];
    }

    /// @notice Whether `stepHash` is a leaf of the anchored tree `root`.
    /// @param root An anchored Merkle root.
    /// @param stepHash The step hash; its leaf is keccak256(keccak256(abi.encode(stepHash))).
    /// @param proof OpenZeppelin `StandardMerkleTree` proof: sibling hashes from leaf to root.
    /// @return True iff `root` is anchored and the proof is valid.
    function verifyStep(bytes32 root, bytes32 stepHash, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        if (_anchoredAt[root] == 0) return false;
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(stepHash))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }
}
