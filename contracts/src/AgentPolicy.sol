// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

/// @title AgentPolicy (rulebook v2)
/// @notice The rulebook for AI agents that spend. Per agent: an allow-list of counterparties, a
/// per-transaction cap, an edge-safe rolling budget, a lifetime cap, a pause switch, and M-of-N
/// human approvals (EIP-712 signatures by the agent's registered approvers) for spends above the
/// cap. Contracts that move money (SPENDER_ROLE: the Escrow) call `consume` inside the very
/// transaction that pays, so every limit is enforced atomically; off-chain callers pre-check with
/// `checkSpend` through eth_call and get exactly the error `consume` would raise.
/// @dev Rolling budget: time is cut into buckets of `windowSeconds / buckets` seconds. A spend in
/// bucket `b` is allowed only if the spends recorded in buckets `b - buckets .. b` plus the new
/// one stay within the budget. Any interval of at most `windowSeconds` lies inside those
/// `buckets + 1` buckets as seen from its last spend, so no such interval ever sees more than the
/// budget (a fixed period would allow twice the budget across its edge). Spends are kept in a
/// ring of 8 packed (bucket index, amount) entries, 4 storage slots per agent; OpenZeppelin's
/// RateLimiter.SlidingWindow was not used because it writes a new slot per spend and cannot take
/// a refund back into the bucket it was spent in. A refund (`credit`) is subtracted from the
/// bucket its spend was recorded in (or dropped if that bucket has left the ring), so it can never
/// raise the spend of any window above its budget.
contract AgentPolicy is AccessControl, EIP712 {
    /// @notice Role allowed to pause one agent or all of them at once (an incident responder).
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");
    /// @notice Role allowed to grant one-off unsigned exceptions up to an agent's `unsignedLimit`
    /// (the service behind the Temporal UI's approve Update).
    bytes32 public constant APPROVER_ROLE = keccak256("APPROVER_ROLE");
    /// @notice Role allowed to record spends and credits (the Escrow contract).
    bytes32 public constant SPENDER_ROLE = keccak256("SPENDER_ROLE");

    /// @notice EIP-712 type of an approval signed by an approver's own key.
    bytes32 public constant APPROVAL_TYPEHASH = keccak256(
        "Approval(bytes32 orderId,address agent,address supplier,uint256 amount,bytes32 decisionHash,uint64 expiry)"
    );

    /// @notice Most buckets a rolling window may have (the ring holds `MAX_BUCKETS + 1`).
    uint8 public constant MAX_BUCKETS = 7;
    /// @notice Most approvers an agent may have.
    uint256 public constant MAX_APPROVERS = 16;
    /// @notice Most amount tiers an agent's approval threshold may have.
    uint256 public constant MAX_TIERS = 4;
    /// @notice Longest an unsigned exception may stay valid.
    uint64 public constant MAX_EXCEPTION_SECONDS = 30 days;

    uint256 private constant _RING = 8;
    uint256 private constant _HALF = (1 << 128) - 1;

    /// @notice How an approved spend was approved.
    enum ApprovalPath {
        None,
        Signatures,
        Exception
    }

    /// @notice One approver's signature over an `Approval` for a spend.
    struct SignedApproval {
        address signer;
        uint64 expiry;
        bytes signature;
    }

    /// @notice Spends above `above` need at least `threshold` signatures.
    struct Tier {
        uint96 above;
        uint8 threshold;
    }

    /// @notice An agent's limits, as the admin sets them.
    struct Limits {
        uint256 perTxCap;
        uint256 unsignedLimit;
        uint256 windowBudget;
        uint64 windowSeconds;
        uint8 buckets;
        uint256 lifetimeCap;
    }

    /// @notice An agent's limits and state, as `agentConfig` reports them.
    struct AgentView {
        bool configured;
        bool paused;
        uint256 perTxCap;
        uint256 unsignedLimit;
        uint256 windowBudget;
        uint64 windowSeconds;
        uint8 buckets;
        uint256 lifetimeCap;
        uint256 lifetimeSpent;
        uint8 threshold;
        uint8 approverCount;
        uint16 epoch;
    }

    /// @notice A one-off unsigned exception for one order above the cap.
    struct Exception {
        address agent;
        uint40 expiry;
        address supplier;
        uint96 amount;
        bytes32 decisionHash;
    }

    /// @dev Storage of one agent: three slots of settings and counters, then the bucket ring.
    struct Agent {
        uint96 perTxCap;
        uint96 unsignedLimit;
        uint32 bucketSeconds;
        uint8 buckets;
        bool configured;
        bool paused;
        uint96 windowBudget;
        uint96 lifetimeCap;
        uint16 epoch;
        uint8 threshold;
        uint8 approverCount;
        uint96 lifetimeSpent;
        uint256[4] ring;
    }

    /// @dev What `_check` found out about an allowed spend.
    struct Verdict {
        ApprovalPath path;
        uint256 bucket;
        address[] signers;
    }

    mapping(address agent => Agent) private _agents;
    mapping(address agent => mapping(address counterparty => bool)) private _allowed;
    mapping(address agent => address[]) private _approverList;
    mapping(address agent => mapping(address approver => bool)) private _isApprover;
    mapping(address agent => Tier[]) private _tiers;
    mapping(bytes32 orderId => Exception) private _exceptions;
    mapping(bytes32 orderId => bool) private _approvedOrders;
    bool private _allPaused;

    /// @notice An agent's limits were set.
    event AgentConfigured(
        address indexed agent,
        uint256 perTxCap,
        uint256 unsignedLimit,
        uint256 windowBudget,
        uint64 windowSeconds,
        uint8 buckets,
        uint256 lifetimeCap
    );
    /// @notice A counterparty was added to or removed from an agent's allow-list.
    event CounterpartyUpdated(address indexed agent, address indexed counterparty, bool allowed);
    /// @notice An agent's approver set and thresholds were replaced.
    event ApproversUpdated(address indexed agent, address[] approvers, uint8 threshold, Tier[] tiers);
    /// @notice A guardian (or the admin) paused an agent.
    event AgentPaused(address indexed agent, address indexed by);
    /// @notice The admin unpaused an agent.
    event AgentUnpaused(address indexed agent, address indexed by);
    /// @notice A guardian (or the admin) paused every agent.
    event AllPaused(address indexed by);
    /// @notice The admin lifted the global pause.
    event AllUnpaused(address indexed by);
    /// @notice The service key allowed the one spend of `orderId` above the cap, unsigned.
    event ExceptionGranted(
        bytes32 indexed orderId,
        address indexed agent,
        address indexed supplier,
        uint256 amount,
        bytes32 decisionHash,
        uint64 expiry,
        address grantedBy
    );
    /// @notice A spend was recorded against an agent's limits, in bucket `bucket`.
    event SpendRecorded(
        address indexed agent, address indexed supplier, bytes32 indexed orderId, uint256 amount, uint32 bucket
    );
    /// @notice A spend went through with approvals; `signers` signed it (empty for an exception).
    event SpendApproved(
        bytes32 indexed orderId, address indexed agent, ApprovalPath path, address[] signers, bytes32 approvalsHash
    );
    /// @notice A refund gave `credited` of `amount` back to bucket `bucket` (0 if that bucket has
    /// left the window).
    event BudgetCredited(address indexed agent, uint256 amount, uint32 bucket, uint256 credited);

    /// @notice The agent has no limits set, so it may not spend.
    error PolicyUnknownAgent(address agent);
    /// @notice The agent is paused.
    error PolicyAgentPaused(address agent);
    /// @notice Every agent is paused.
    error PolicyAllPaused();
    /// @notice The counterparty is not on the agent's allow-list.
    error PolicyCounterpartyNotAllowed(address agent, address counterparty);
    /// @notice The amount exceeds the per-transaction cap and no approval was given.
    error PolicyCapExceeded(uint256 amount, uint256 cap);
    /// @notice The amount exceeds what is left of the rolling budget; some budget comes back at
    /// `nextReleaseAt` (unix time; 0 if nothing is spent in the window).
    error PolicyBudgetExceeded(uint256 amount, uint256 remaining, uint64 nextReleaseAt);
    /// @notice The amount exceeds what is left of the agent's lifetime cap.
    error PolicyLifetimeCapExceeded(uint256 amount, uint256 remaining);
    /// @notice Fewer valid signatures than the threshold for this amount.
    error PolicyApprovalsBelowThreshold(uint256 valid, uint256 required);
    /// @notice The signer is not one of the agent's approvers.
    error PolicyApproverUnknown(address signer);
    /// @notice The same approver signed twice.
    error PolicyApprovalDuplicated(address signer);
    /// @notice The approval expired.
    error PolicyApprovalExpired(address signer, uint64 expiry);
    /// @notice The signature is not the signer's over this approval, chain and contract.
    error PolicyApprovalInvalid(address signer);
    /// @notice The order was approved and spent before: approvals are single-use.
    error PolicyApprovalReplayed(bytes32 orderId);
    /// @notice The order's exception is for another agent, supplier, amount or decision.
    error PolicyExceptionMismatch(bytes32 orderId);
    /// @notice The order's exception expired.
    error PolicyExceptionExpired(bytes32 orderId, uint64 expiry);
    /// @notice Above the unsigned limit only signatures can approve.
    error PolicyUnsignedLimitExceeded(uint256 amount, uint256 unsignedLimit);
    /// @notice The window must last at least one second per bucket, divide evenly into 1 to
    /// MAX_BUCKETS buckets, and a bucket must fit in 32 bits of seconds.
    error PolicyInvalidWindow(uint64 windowSeconds, uint8 buckets);
    /// @notice An amount does not fit in 96 bits.
    error PolicyInvalidLimits();
    /// @notice An approver is the zero address, listed twice, the agent itself, or too many.
    error PolicyInvalidApprover(address approver);
    /// @notice A threshold is zero or exceeds the number of approvers.
    error PolicyInvalidThreshold(uint256 threshold, uint256 approverCount);
    /// @notice Tiers must be at most MAX_TIERS with strictly increasing `above`.
    error PolicyInvalidTiers();
    /// @notice An exception's expiry must lie within MAX_EXCEPTION_SECONDS from now.
    error PolicyInvalidExpiry(uint64 expiry);

    /// @notice The deployer becomes the admin; guardians, approvers and spenders are granted.
    constructor() EIP712("ledgerflow AgentPolicy", "2") {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    // --- admin ----------------------------------------------------------------------------------

    /// @notice Set `agent`'s limits. Spending already recorded is kept; if the bucket length
    /// changes, everything still inside the old window moves into the current bucket (counted
    /// for a full new window) and older refunds no longer credit the budget.
    /// @param agent The agent's address (the account that opens escrows).
    /// @param l The limits; `unsignedLimit <= perTxCap` turns unsigned exceptions off.
    function setAgent(address agent, Limits calldata l) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (l.buckets == 0 || l.buckets > MAX_BUCKETS || l.windowSeconds % l.buckets != 0) {
            revert PolicyInvalidWindow(l.windowSeconds, l.buckets);
        }
        uint256 bucketSeconds = l.windowSeconds / l.buckets;
        if (bucketSeconds == 0 || bucketSeconds > type(uint32).max) {
            revert PolicyInvalidWindow(l.windowSeconds, l.buckets);
        }
        uint256 max96 = type(uint96).max;
        if (l.perTxCap > max96 || l.unsignedLimit > max96 || l.windowBudget > max96 || l.lifetimeCap > max96) {
            revert PolicyInvalidLimits();
        }
        Agent storage a = _agents[agent];
        if (a.configured && a.bucketSeconds != bucketSeconds) {
            uint256 carried = _liveSum(a, block.timestamp / a.bucketSeconds);
            // Every spend was checked against a budget of at most 96 bits: so is their sum.
            if (carried > type(uint96).max) carried = type(uint96).max;
            delete a.ring;
            a.epoch += 1;
            _addToBucket(a, block.timestamp / bucketSeconds, carried);
        }
        a.perTxCap = uint96(l.perTxCap);
        a.unsignedLimit = uint96(l.unsignedLimit);
        a.bucketSeconds = uint32(bucketSeconds);
        a.buckets = l.buckets;
        a.configured = true;
        a.windowBudget = uint96(l.windowBudget);
        a.lifetimeCap = uint96(l.lifetimeCap);
        emit AgentConfigured(
            agent, l.perTxCap, l.unsignedLimit, l.windowBudget, l.windowSeconds, l.buckets, l.lifetimeCap
        );
    }

    /// @notice Add `counterparty` to, or remove it from, `agent`'s allow-list.
    /// @param agent The agent.
    /// @param counterparty The payee.
    /// @param allowed Whether the agent may pay it.
    function setCounterparty(address agent, address counterparty, bool allowed)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        _allowed[agent][counterparty] = allowed;
        emit CounterpartyUpdated(agent, counterparty, allowed);
    }

    /// @notice Replace `agent`'s approvers and thresholds. A spend above the cap with signatures
    /// needs `max(threshold, threshold of every tier whose above < amount)` of them.
    /// @param agent The agent.
    /// @param approvers The approvers (EOAs or ERC-1271 contracts such as a Safe); not the agent.
    /// @param threshold The base M (1..N when there are approvers; 0 with none).
    /// @param tiers Optional stricter thresholds for larger amounts, `above` strictly increasing.
    function setApprovers(address agent, address[] calldata approvers, uint8 threshold, Tier[] calldata tiers)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        uint256 n = approvers.length;
        if (n > MAX_APPROVERS) revert PolicyInvalidApprover(approvers[MAX_APPROVERS]);
        if (n == 0 ? threshold != 0 || tiers.length != 0 : threshold == 0 || threshold > n) {
            revert PolicyInvalidThreshold(threshold, n);
        }
        if (tiers.length > MAX_TIERS) revert PolicyInvalidTiers();
        for (uint256 i = 0; i < tiers.length; ++i) {
            if (i > 0 && tiers[i].above <= tiers[i - 1].above) revert PolicyInvalidTiers();
            if (tiers[i].threshold == 0 || tiers[i].threshold > n) {
                revert PolicyInvalidThreshold(tiers[i].threshold, n);
            }
        }

        address[] storage old = _approverList[agent];
        for (uint256 i = 0; i < old.length; ++i) {
            _isApprover[agent][old[i]] = false;
        }
        delete _approverList[agent];
        for (uint256 i = 0; i < n; ++i) {
            address approver = approvers[i];
            if (approver == address(0) || approver == agent || _isApprover[agent][approver]) {
                revert PolicyInvalidApprover(approver);
            }
            _isApprover[agent][approver] = true;
            _approverList[agent].push(approver);
        }
        delete _tiers[agent];
        for (uint256 i = 0; i < tiers.length; ++i) {
            _tiers[agent].push(tiers[i]);
        }
        Agent storage a = _agents[agent];
        a.threshold = threshold;
        a.approverCount = uint8(n);
        emit ApproversUpdated(agent, approvers, threshold, tiers);
    }

    /// @notice Pause `agent`: it can neither open nor release escrows until the admin unpauses.
    /// Refunds still work. Callable by a guardian or the admin.
    /// @param agent The agent.
    function pauseAgent(address agent) external {
        _checkGuardian();
        _agents[agent].paused = true;
        emit AgentPaused(agent, msg.sender);
    }

    /// @notice Lift the pause of `agent`; only the admin may.
    /// @param agent The agent.
    function unpauseAgent(address agent) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _agents[agent].paused = false;
        emit AgentUnpaused(agent, msg.sender);
    }

    /// @notice Pause every agent at once (the kill switch). Callable by a guardian or the admin.
    function pauseAll() external {
        _checkGuardian();
        _allPaused = true;
        emit AllPaused(msg.sender);
    }

    /// @notice Lift the global pause; only the admin may. Agents paused one by one stay paused.
    function unpauseAll() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _allPaused = false;
        emit AllUnpaused(msg.sender);
    }

    // --- the unsigned approval path -------------------------------------------------------------

    /// @notice Allow the one spend of `orderId` above the cap without signatures: exactly this
    /// agent, supplier, amount and decision, until `expiry`, once, and only up to the agent's
    /// `unsignedLimit`. The allow-list, budget and lifetime cap still apply.
    /// @param orderId The order the exception is for.
    /// @param agent The agent that will spend.
    /// @param supplier The payee.
    /// @param amount The exact amount.
    /// @param decisionHash The step hash of the decision that chose this payment.
    /// @param expiry Unix time after which the exception is void (at most 30 days ahead).
    function grantException(
        bytes32 orderId,
        address agent,
        address supplier,
        uint256 amount,
        bytes32 decisionHash,
        uint64 expiry
    ) external onlyRole(APPROVER_ROLE) {
        Agent storage a = _agents[agent];
        if (!a.configured) revert PolicyUnknownAgent(agent);
        if (amount > a.unsignedLimit) revert PolicyUnsignedLimitExceeded(amount, a.unsignedLimit);
        if (expiry < block.timestamp || expiry > block.timestamp + MAX_EXCEPTION_SECONDS) {
            revert PolicyInvalidExpiry(expiry);
        }
        if (_approvedOrders[orderId]) revert PolicyApprovalReplayed(orderId);
        _exceptions[orderId] = Exception({
            agent: agent, expiry: uint40(expiry), supplier: supplier, amount: uint96(amount), decisionHash: decisionHash
        });
        emit ExceptionGranted(orderId, agent, supplier, amount, decisionHash, expiry, msg.sender);
    }

    // --- spending -------------------------------------------------------------------------------

    /// @notice Check a spend without recording it; meant for eth_call pre-checks.
    /// @dev Reverts with exactly the error `consume` would raise for the same spend now.
    /// @param agent The spending agent.
    /// @param supplier The payee.
    /// @param amount The amount in token units.
    /// @param orderId The order (selects an exception; approvals are bound to it).
    /// @param decisionHash The step hash of the decision that chose this payment.
    /// @param approvals Signed approvals (empty when none are needed or an exception is used).
    /// @return path How the spend would be approved (None when within the cap, unsigned).
    function checkSpend(
        address agent,
        address supplier,
        uint256 amount,
        bytes32 orderId,
        bytes32 decisionHash,
        SignedApproval[] calldata approvals
    ) external view returns (ApprovalPath path) {
        return _check(agent, supplier, amount, orderId, decisionHash, approvals).path;
    }

    /// @notice Check and record a spend. Called by the contract that moves the money.
    /// @dev The spend is recorded in the bucket `spendRefOf(agent)` names right now; the caller
    /// keeps that reference for `credit`.
    /// @param agent The spending agent.
    /// @param supplier The payee.
    /// @param amount The amount in token units.
    /// @param orderId The order; an approved order id is used up.
    /// @param decisionHash The step hash of the decision that chose this payment.
    /// @param approvals Signed approvals (empty when none are needed or an exception is used).
    function consume(
        address agent,
        address supplier,
        uint256 amount,
        bytes32 orderId,
        bytes32 decisionHash,
        SignedApproval[] calldata approvals
    ) external onlyRole(SPENDER_ROLE) {
        Verdict memory v = _check(agent, supplier, amount, orderId, decisionHash, approvals);
        Agent storage a = _agents[agent];
        // Fits in 96 bits: _check bounded amount by the lifetime cap's remainder.
        a.lifetimeSpent += uint96(amount);
        _addToBucket(a, v.bucket, amount);
        emit SpendRecorded(agent, supplier, orderId, amount, uint32(v.bucket));
        if (v.path != ApprovalPath.None) {
            _approvedOrders[orderId] = true;
            emit SpendApproved(orderId, agent, v.path, v.signers, hashApprovals(approvals));
        }
    }

    /// @notice Where a spend by `agent` would be recorded now: `epoch << 32 | bucket index`
    /// (0 for an unknown agent, whose spend `consume` refuses anyway).
    /// @param agent The agent.
    /// @return spendRef The reference `credit` takes back on a refund.
    function spendRefOf(address agent) external view returns (uint48 spendRef) {
        Agent storage a = _agents[agent];
        if (!a.configured) return 0;
        return (uint48(a.epoch) << 32) | uint48(block.timestamp / a.bucketSeconds);
    }

    /// @notice The hash of a set of signed approvals that EscrowOpened and SpendApproved carry.
    /// @param approvals The approvals as given to `consume`.
    /// @return keccak256(abi.encode(approvals)), or zero for none.
    function hashApprovals(SignedApproval[] calldata approvals) public pure returns (bytes32) {
        return approvals.length == 0 ? bytes32(0) : keccak256(abi.encode(approvals));
    }

    /// @notice Give a refunded spend back to the limits it was counted against: the lifetime
    /// total, and the bucket it was recorded in if that bucket is still inside the window (and
    /// the bucket length has not changed since); a spend that no longer counts gives nothing
    /// back. Never reverts for the spender, so a refund is never blocked.
    /// @param agent The agent that was refunded.
    /// @param amount The refunded amount in token units.
    /// @param spendRef The `spendRef` that `consume` returned for the spend.
    function credit(address agent, uint256 amount, uint48 spendRef) external onlyRole(SPENDER_ROLE) {
        Agent storage a = _agents[agent];
        uint32 bucket = uint32(spendRef);
        uint256 credited = 0;
        if (a.configured) {
            uint256 spent = a.lifetimeSpent;
            a.lifetimeSpent = uint96(spent > amount ? spent - amount : 0);
            uint256 current = block.timestamp / a.bucketSeconds;
            // Only a bucket still inside the window holds anything that counts.
            if (uint16(spendRef >> 32) == a.epoch && current - bucket <= a.buckets) {
                uint256 pos = bucket % _RING;
                (uint256 index, uint256 held) = _entry(a.ring[pos >> 1], pos);
                if (index == bucket && held > 0) {
                    credited = held > amount ? amount : held;
                    _setEntry(a, pos, index, held - credited);
                }
            }
        }
        emit BudgetCredited(agent, amount, bucket, credited);
    }

    // --- views ----------------------------------------------------------------------------------

    /// @notice Revert with PolicyAllPaused / PolicyAgentPaused if `agent` may not move money now.
    /// @param agent The agent.
    function requireActive(address agent) external view {
        if (_allPaused) revert PolicyAllPaused();
        if (_agents[agent].paused) revert PolicyAgentPaused(agent);
    }

    /// @notice Whether `agent` is paused, by itself or by the global pause.
    /// @param agent The agent.
    /// @return True if the agent may not open or release escrows now.
    function isPaused(address agent) external view returns (bool) {
        return _allPaused || _agents[agent].paused;
    }

    /// @notice Whether the global pause is on.
    /// @return True if every agent is paused.
    function allPaused() external view returns (bool) {
        return _allPaused;
    }

    /// @notice Whether `agent` may pay `counterparty`.
    /// @param agent The agent.
    /// @param counterparty The payee.
    /// @return True if allow-listed for the agent.
    function isCounterpartyAllowed(address agent, address counterparty) external view returns (bool) {
        return _allowed[agent][counterparty];
    }

    /// @notice `agent`'s limits and counters.
    /// @param agent The agent.
    /// @return v The agent's settings (all zero for an unknown agent).
    function agentConfig(address agent) external view returns (AgentView memory v) {
        Agent storage a = _agents[agent];
        v = AgentView({
            configured: a.configured,
            paused: a.paused,
            perTxCap: a.perTxCap,
            unsignedLimit: a.unsignedLimit,
            windowBudget: a.windowBudget,
            windowSeconds: uint64(a.bucketSeconds) * a.buckets,
            buckets: a.buckets,
            lifetimeCap: a.lifetimeCap,
            lifetimeSpent: a.lifetimeSpent,
            threshold: a.threshold,
            approverCount: a.approverCount,
            epoch: a.epoch
        });
    }

    /// @notice `agent`'s approvers and thresholds.
    /// @param agent The agent.
    /// @return approvers The approver addresses.
    /// @return threshold The base threshold.
    /// @return tiers The amount tiers.
    function approversOf(address agent)
        external
        view
        returns (address[] memory approvers, uint8 threshold, Tier[] memory tiers)
    {
        return (_approverList[agent], _agents[agent].threshold, _tiers[agent]);
    }

    /// @notice Whether `approver` is one of `agent`'s approvers.
    /// @param agent The agent.
    /// @param approver The address.
    /// @return True if registered.
    function isApprover(address agent, address approver) external view returns (bool) {
        return _isApprover[agent][approver];
    }

    /// @notice How many signatures a spend of `amount` by `agent` needs (0 within the cap).
    /// @param agent The agent.
    /// @param amount The amount in token units.
    /// @return The threshold.
    function requiredApprovals(address agent, uint256 amount) external view returns (uint256) {
        Agent storage a = _agents[agent];
        return amount > a.perTxCap ? _required(agent, a, amount) : 0;
    }

    /// @notice What `agent` may still spend now under its rolling budget.
    /// @param agent The agent.
    /// @return remaining The remaining budget in token units (0 for an unknown agent).
    /// @return nextReleaseAt When the oldest spend in the window leaves it (0 if none).
    /// @return nextReleaseAmount How much budget comes back then.
    function budgetOf(address agent)
        external
        view
        returns (uint256 remaining, uint64 nextReleaseAt, uint256 nextReleaseAmount)
    {
        Agent storage a = _agents[agent];
        if (!a.configured) return (0, 0, 0);
        uint256 b = block.timestamp / a.bucketSeconds;
        uint256 live = _liveSum(a, b);
        remaining = live >= a.windowBudget ? 0 : a.windowBudget - live;
        (nextReleaseAt, nextReleaseAmount) = _nextRelease(a, b);
    }

    /// @notice What `agent` may still spend now under its rolling budget.
    /// @param agent The agent.
    /// @return The remaining budget in token units (0 for an unknown agent).
    function remainingBudget(address agent) external view returns (uint256) {
        Agent storage a = _agents[agent];
        if (!a.configured) return 0;
        uint256 live = _liveSum(a, block.timestamp / a.bucketSeconds);
        return live >= a.windowBudget ? 0 : a.windowBudget - live;
    }

    /// @notice What is left of `agent`'s lifetime cap.
    /// @param agent The agent.
    /// @return The remaining amount in token units.
    function remainingLifetime(address agent) external view returns (uint256) {
        Agent storage a = _agents[agent];
        return a.lifetimeSpent >= a.lifetimeCap ? 0 : a.lifetimeCap - a.lifetimeSpent;
    }

    /// @notice The unsigned exception granted for `orderId`, if any.
    /// @param orderId The order.
    /// @return The exception (all zero if none).
    function exceptionOf(bytes32 orderId) external view returns (Exception memory) {
        return _exceptions[orderId];
    }

    /// @notice Whether `orderId` was spent with approvals (so they cannot be used again).
    /// @param orderId The order.
    /// @return True once used.
    function orderApproved(bytes32 orderId) external view returns (bool) {
        return _approvedOrders[orderId];
    }

    /// @notice The EIP-712 digest an approver signs for this approval.
    /// @param orderId The order.
    /// @param agent The agent.
    /// @param supplier The payee.
    /// @param amount The amount.
    /// @param decisionHash The decision step's hash.
    /// @param expiry Unix time until which the approval is valid.
    /// @return The digest (`\x19\x01 || domainSeparator || structHash`, hashed).
    function approvalDigest(
        bytes32 orderId,
        address agent,
        address supplier,
        uint256 amount,
        bytes32 decisionHash,
        uint64 expiry
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(APPROVAL_TYPEHASH, orderId, agent, supplier, amount, decisionHash, expiry))
        );
    }

    // --- internals ------------------------------------------------------------------------------

    /// @dev The checks shared by checkSpend and consume, in the order a caller sees them.
    function _check(
        address agent,
        address supplier,
        uint256 amount,
        bytes32 orderId,
        bytes32 decisionHash,
        SignedApproval[] calldata approvals
    ) private view returns (Verdict memory v) {
        if (_allPaused) revert PolicyAllPaused();
        Agent storage a = _agents[agent];
        if (!a.configured) revert PolicyUnknownAgent(agent);
        if (a.paused) revert PolicyAgentPaused(agent);
        if (!_allowed[agent][supplier]) revert PolicyCounterpartyNotAllowed(agent, supplier);

        uint256 cap = a.perTxCap;
        if (approvals.length > 0 || amount > cap) {
            if (_approvedOrders[orderId]) revert PolicyApprovalReplayed(orderId);
        }
        if (approvals.length > 0) {
            v.signers = _verify(agent, supplier, amount, orderId, decisionHash, approvals);
            v.path = ApprovalPath.Signatures;
            if (amount > cap) {
                uint256 required = _required(agent, a, amount);
                if (approvals.length < required) revert PolicyApprovalsBelowThreshold(approvals.length, required);
            }
        } else if (amount > cap) {
            Exception storage ex = _exceptions[orderId];
            if (ex.agent == address(0)) revert PolicyCapExceeded(amount, cap);
            if (
                ex.agent != agent || ex.supplier != supplier || ex.amount != amount
                    || ex.decisionHash != decisionHash
            ) revert PolicyExceptionMismatch(orderId);
            if (block.timestamp > ex.expiry) revert PolicyExceptionExpired(orderId, ex.expiry);
            if (amount > a.unsignedLimit) revert PolicyUnsignedLimitExceeded(amount, a.unsignedLimit);
            v.path = ApprovalPath.Exception;
        }

        uint256 lifetimeLeft = a.lifetimeSpent >= a.lifetimeCap ? 0 : a.lifetimeCap - a.lifetimeSpent;
        if (amount > lifetimeLeft) revert PolicyLifetimeCapExceeded(amount, lifetimeLeft);

        v.bucket = block.timestamp / a.bucketSeconds;
        uint256 live = _liveSum(a, v.bucket);
        uint256 remaining = live >= a.windowBudget ? 0 : a.windowBudget - live;
        if (amount > remaining) {
            (uint64 releaseAt,) = _nextRelease(a, v.bucket);
            revert PolicyBudgetExceeded(amount, remaining, releaseAt);
        }
    }

    /// @dev Verify every signed approval; any bad one reverts. Returns the signers in order.
    function _verify(
        address agent,
        address supplier,
        uint256 amount,
        bytes32 orderId,
        bytes32 decisionHash,
        SignedApproval[] calldata approvals
    ) private view returns (address[] memory signers) {
        signers = new address[](approvals.length);
        for (uint256 i = 0; i < approvals.length; ++i) {
            SignedApproval calldata s = approvals[i];
            address signer = s.signer;
            if (!_isApprover[agent][signer]) revert PolicyApproverUnknown(signer);
            for (uint256 j = 0; j < i; ++j) {
                if (signers[j] == signer) revert PolicyApprovalDuplicated(signer);
            }
            if (s.expiry < block.timestamp) revert PolicyApprovalExpired(signer, s.expiry);
            bytes32 digest = approvalDigest(orderId, agent, supplier, amount, decisionHash, s.expiry);
            if (!SignatureChecker.isValidSignatureNowCalldata(signer, digest, s.signature)) {
                revert PolicyApprovalInvalid(signer);
            }
            signers[i] = signer;
        }
    }

    /// @dev The signature threshold for `amount` (at least 1, so no approvers means no approval).
    function _required(address agent, Agent storage a, uint256 amount) private view returns (uint256 m) {
        m = a.threshold == 0 ? 1 : a.threshold;
        Tier[] storage tiers = _tiers[agent];
        for (uint256 i = 0; i < tiers.length; ++i) {
            if (amount > tiers[i].above && tiers[i].threshold > m) m = tiers[i].threshold;
        }
    }

    function _checkGuardian() private view {
        if (!hasRole(GUARDIAN_ROLE, msg.sender) && !hasRole(DEFAULT_ADMIN_ROLE, msg.sender)) {
            revert AccessControlUnauthorizedAccount(msg.sender, GUARDIAN_ROLE);
        }
    }

    /// @dev Entry `pos` of the ring, the low or high 128 bits of word `pos / 2`: the bucket index
    /// in the upper 32 bits, the amount in the lower 96.
    function _entry(uint256 word, uint256 pos) private pure returns (uint256 index, uint256 amount) {
        uint256 half = (word >> ((pos & 1) * 128)) & _HALF;
        return (half >> 96, half & type(uint96).max);
    }

    function _setEntry(Agent storage a, uint256 pos, uint256 index, uint256 amount) private {
        uint256 shift = (pos & 1) * 128;
        uint256 word = a.ring[pos >> 1];
        a.ring[pos >> 1] = (word & ~(_HALF << shift)) | (((index << 96) | amount) << shift);
    }

    function _addToBucket(Agent storage a, uint256 bucket, uint256 amount) private {
        uint256 pos = bucket % _RING;
        (uint256 index, uint256 held) = _entry(a.ring[pos >> 1], pos);
        // An entry of another bucket is at least _RING buckets old: outside every window.
        _setEntry(a, pos, bucket, index != bucket ? amount : held + amount);
    }

    /// @dev Sum of the spends in buckets `bucket - buckets .. bucket`.
    function _liveSum(Agent storage a, uint256 bucket) private view returns (uint256 sum) {
        uint256[4] memory ring = a.ring;
        uint256 k = a.buckets;
        for (uint256 pos = 0; pos < _RING; ++pos) {
            (uint256 index, uint256 amount) = _entry(ring[pos >> 1], pos);
            if (index <= bucket && bucket - index <= k) sum += amount;
        }
    }

    /// @dev When the oldest non-empty bucket of the window leaves it, and what it holds.
    function _nextRelease(Agent storage a, uint256 bucket) private view returns (uint64 releaseAt, uint256 amount) {
        uint256[4] memory ring = a.ring;
        uint256 k = a.buckets;
        uint256 oldest = type(uint256).max;
        for (uint256 pos = 0; pos < _RING; ++pos) {
            (uint256 index, uint256 held) = _entry(ring[pos >> 1], pos);
            if (held > 0 && index <= bucket && bucket - index <= k && index < oldest) {
                oldest = index;
                amount = held;
            }
        }
        if (oldest != type(uint256).max) releaseAt = uint64((oldest + k + 1) * a.bucketSeconds);
    }
}
