// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {AgentPolicy} from "./AgentPolicy.sol";
import {AgentVault} from "./AgentVault.sol";

/// @title Escrow (v2)
/// @notice Holds an agent's payment for an order until the agent releases it to the supplier or
/// it is refunded to the agent's vault. `open` takes the money from the agent's AgentVault only
/// after the AgentPolicy has checked and recorded the spend inside the same call (complete
/// mediation), and it binds the payment to the decision that chose it: the step hash of that
/// decision, and the hash of the approvals, are in `EscrowOpened` for anyone to follow back to the
/// anchored checkpoint.
/// @dev Order ids are idempotency keys: each can be opened once, ever.
contract Escrow is ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice Latest deadline `open` accepts, from now: money never sits behind a deadline that
    /// never comes.
    uint64 public constant MAX_DEADLINE_SECONDS = 365 days;

    /// @notice Lifecycle of an order: None -> Open -> Released | Refunded.
    enum Status {
        None,
        Open,
        Released,
        Refunded
    }

    /// @notice One escrowed order (two storage slots).
    struct Order {
        address agent;
        uint40 deadline;
        Status status;
        uint48 spendRef;
        address supplier;
        uint96 amount;
    }

    /// @notice The payment token.
    IERC20 public immutable token;
    /// @notice The rulebook every opening is checked against.
    AgentPolicy public immutable policy;
    /// @notice Where the agents' money lives between payments.
    AgentVault public immutable vault;

    mapping(bytes32 orderId => Order) private _orders;

    /// @notice An agent escrowed `amount` for `supplier`, as decided by the checkpointed step
    /// `decisionHash`, with the approvals hashing to `approvalsHash` (zero without signatures).
    event EscrowOpened(
        bytes32 indexed orderId,
        address indexed agent,
        address indexed supplier,
        uint256 amount,
        uint64 deadline,
        bytes32 decisionHash,
        bytes32 approvalsHash
    );
    /// @notice The escrowed amount was paid to the supplier.
    event EscrowReleased(bytes32 indexed orderId, address indexed supplier, uint256 amount);
    /// @notice The escrowed amount went back to the agent's vault balance.
    event EscrowRefunded(bytes32 indexed orderId, address indexed agent, uint256 amount);

    /// @notice An order with this id exists already.
    error EscrowOrderExists(bytes32 orderId);
    /// @notice Nothing to escrow.
    error EscrowZeroAmount();
    /// @notice The deadline must lie after now and at most MAX_DEADLINE_SECONDS ahead.
    error EscrowDeadlineOutOfRange(uint64 deadline, uint64 earliest, uint64 latest);
    /// @notice A payment must name the decision step that chose it.
    error EscrowMissingDecision();
    /// @notice The caller may not do this to the order.
    error EscrowNotAuthorized(address caller);
    /// @notice The order is not open (`status` is its Status).
    error EscrowNotOpen(bytes32 orderId, uint8 status);
    /// @notice The vault holds another token than the escrow pays in.
    error EscrowTokenMismatch(address vaultToken, address token);
    /// @notice The amount does not fit in 96 bits.
    error EscrowAmountTooLarge(uint256 amount);

    /// @param token_ The payment token.
    /// @param policy_ The AgentPolicy; this contract needs its SPENDER_ROLE.
    /// @param vault_ The AgentVault of the same token; this contract needs its PAYER_ROLE.
    constructor(IERC20 token_, AgentPolicy policy_, AgentVault vault_) {
        if (address(vault_.token()) != address(token_)) {
            revert EscrowTokenMismatch(address(vault_.token()), address(token_));
        }
        token = token_;
        policy = policy_;
        vault = vault_;
    }

    /// @notice Escrow `amount` of the caller's (the agent's) vault balance for `supplier` under
    /// `orderId`, if the policy allows the spend.
    /// @dev Reverts with the policy's or the vault's error if the spend is not allowed.
    /// @param orderId The order's idempotency key; usable once.
    /// @param supplier The payee (must be on the agent's allow-list).
    /// @param amount Token units to escrow.
    /// @param deadline Unix time after which anyone may refund; at most 365 days ahead.
    /// @param decisionHash The step hash of the checkpointed decision that chose this payment.
    /// @param approvals Approvers' EIP-712 signatures, needed above the cap (unless an unsigned
    /// exception was granted for the order).
    function open(
        bytes32 orderId,
        address supplier,
        uint256 amount,
        uint64 deadline,
        bytes32 decisionHash,
        AgentPolicy.SignedApproval[] calldata approvals
    ) external nonReentrant {
        _checkOrder(orderId, amount, deadline, decisionHash);
        // Effects first: the order and its event, then the policy records the spend (or the
        // whole call reverts) and the vault pays.
        _orders[orderId] = Order({
            agent: msg.sender,
            deadline: uint40(deadline),
            status: Status.Open,
            spendRef: policy.spendRefOf(msg.sender),
            supplier: supplier,
            amount: uint96(amount)
        });
        emit EscrowOpened(
            orderId, msg.sender, supplier, amount, deadline, decisionHash, policy.hashApprovals(approvals)
        );
        policy.consume(msg.sender, supplier, amount, orderId, decisionHash, approvals);
        vault.pull(msg.sender, amount);
    }

    /// @notice Revert with exactly the error `open` would raise if `agent` called it now.
    /// @dev For eth_call pre-checks; the same arguments as `open`, plus the agent.
    /// @param agent The agent that would open.
    /// @param orderId The order's idempotency key.
    /// @param supplier The payee.
    /// @param amount Token units.
    /// @param deadline Unix time after which anyone may refund.
    /// @param decisionHash The decision step's hash.
    /// @param approvals Approvers' signatures.
    /// @return path How the spend would be approved.
    function checkOpen(
        address agent,
        bytes32 orderId,
        address supplier,
        uint256 amount,
        uint64 deadline,
        bytes32 decisionHash,
        AgentPolicy.SignedApproval[] calldata approvals
    ) external view returns (AgentPolicy.ApprovalPath path) {
        _checkOrder(orderId, amount, deadline, decisionHash);
        path = policy.checkSpend(agent, supplier, amount, orderId, decisionHash, approvals);
        vault.checkPull(agent, amount);
    }

    /// @notice Pay order `orderId` out to its supplier; only the order's agent may, and only
    /// while the agent is not paused.
    /// @param orderId The order.
    function release(bytes32 orderId) external nonReentrant {
        Order storage o = _openOrder(orderId);
        address agent = o.agent;
        if (msg.sender != agent) revert EscrowNotAuthorized(msg.sender);
        policy.requireActive(agent);
        o.status = Status.Released;
        address supplier = o.supplier;
        uint256 amount = o.amount;
        emit EscrowReleased(orderId, supplier, amount);
        token.safeTransfer(supplier, amount);
    }

    /// @notice Return order `orderId` to its agent's vault balance: by the agent at any time while
    /// open, by a policy guardian at any time (incident response), by anyone after the deadline.
    /// The spend is credited back to the bucket of the policy it was counted in.
    /// @param orderId The order.
    function refund(bytes32 orderId) external nonReentrant {
        Order storage o = _openOrder(orderId);
        address agent = o.agent;
        if (
            msg.sender != agent && block.timestamp <= o.deadline
                && !policy.hasRole(policy.GUARDIAN_ROLE(), msg.sender)
        ) revert EscrowNotAuthorized(msg.sender);
        o.status = Status.Refunded;
        uint256 amount = o.amount;
        emit EscrowRefunded(orderId, agent, amount);
        policy.credit(agent, amount, o.spendRef);
        token.forceApprove(address(vault), amount);
        vault.deposit(agent, amount);
    }

    /// @notice Order `orderId` (all zero, status None, if unknown).
    /// @param orderId The order.
    /// @return The order.
    function order(bytes32 orderId) external view returns (Order memory) {
        return _orders[orderId];
    }

    function _checkOrder(bytes32 orderId, uint256 amount, uint64 deadline, bytes32 decisionHash)
        private
        view
    {
        if (amount == 0) revert EscrowZeroAmount();
        if (amount > type(uint96).max) revert EscrowAmountTooLarge(amount);
        if (_orders[orderId].status != Status.None) revert EscrowOrderExists(orderId);
        uint64 earliest = uint64(block.timestamp) + 1;
        uint64 latest = uint64(block.timestamp) + MAX_DEADLINE_SECONDS;
        if (deadline < earliest || deadline > latest) revert EscrowDeadlineOutOfRange(deadline, earliest, latest);
        if (decisionHash == bytes32(0)) revert EscrowMissingDecision();
    }

    function _openOrder(bytes32 orderId) private view returns (Order storage o) {
        o = _orders[orderId];
        if (o.status != Status.Open) revert EscrowNotOpen(orderId, uint8(o.status));
    }
}
