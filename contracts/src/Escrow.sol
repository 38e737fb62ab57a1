// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {AgentPolicy} from "./AgentPolicy.sol";

/// @title Escrow
/// @notice Holds an agent's payment for an order until the agent releases it to the supplier or
/// it is refunded. Every `open` is checked against the AgentPolicy inside the same call that
/// moves the money (complete mediation), so no pre-check can be skipped.
/// @dev Order ids are idempotency keys: each can be opened once, ever.
contract Escrow is ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice Lifecycle of an order: None -> Open -> Released | Refunded.
    enum Status {
        None,
        Open,
        Released,
        Refunded
    }

    /// @notice One escrowed order.
    struct Order {
        address agent;
        address supplier;
        uint256 amount;
        uint64 deadline;
        Status status;
    }

    /// @notice The payment token.
    IERC20 public immutable token;
    /// @notice The rulebook every opening is checked against.
    AgentPolicy public immutable policy;

    mapping(bytes32 orderId => Order) private _orders;

    /// @notice An agent escrowed `amount` for `supplier`.
    event EscrowOpened(
        bytes32 indexed orderId, address indexed agent, address indexed supplier, uint256 amount, uint64 deadline
    );
    /// @notice The escrowed amount was paid to the supplier.
    event EscrowReleased(bytes32 indexed orderId, address indexed supplier, uint256 amount);
    /// @notice The escrowed amount was paid back to the agent.
    event EscrowRefunded(bytes32 indexed orderId, address indexed agent, uint256 amount);

    /// @notice An order with this id exists already.
    error EscrowOrderExists(bytes32 orderId);
    /// @notice Nothing to escrow.
    error EscrowZeroAmount();
    /// @notice The deadline must lie in the future.
    error EscrowInvalidDeadline(uint64 deadline);
    /// @notice The caller may not do this to the order.
    error EscrowNotAuthorized(address caller);
    /// @notice The order is not open (`status` is its Status).
    error EscrowNotOpen(bytes32 orderId, uint8 status);

    /// @param token_ The payment token.
    /// @param policy_ The AgentPolicy; this contract needs its SPENDER_ROLE.
    constructor(IERC20 token_, AgentPolicy policy_) {
        token = token_;
        policy = policy_;
    }

    /// @notice Escrow `amount` from the caller (the agent) for `supplier` under `orderId`.
    /// @dev Reverts with the policy's error if the spend is not allowed. The caller must have
    /// approved this contract for `amount`.
    /// @param orderId The order's idempotency key; usable once.
    /// @param supplier The payee (must be allow-listed by the policy).
    /// @param amount Token units to escrow.
    /// @param deadline Unix time after which anyone may refund the agent.
    function open(bytes32 orderId, address supplier, uint256 amount, uint64 deadline) external nonReentrant {
        if (amount == 0) revert EscrowZeroAmount();
        if (_orders[orderId].status != Status.None) revert EscrowOrderExists(orderId);
        if (deadline <= block.timestamp) revert EscrowInvalidDeadline(deadline);

        _orders[orderId] =
            Order({agent: msg.sender, supplier: supplier, amount: amount, deadline: deadline, status: Status.Open});
        emit EscrowOpened(orderId, msg.sender, supplier, amount, deadline);

        policy.consume(msg.sender, supplier, amount, orderId);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Pay order `orderId` out to its supplier; only the order's agent may.
    /// @param orderId The order.
    function release(bytes32 orderId) external nonReentrant {
        Order storage o = _openOrder(orderId);
        if (msg.sender != o.agent) revert EscrowNotAuthorized(msg.sender);
        o.status = Status.Released;
        address supplier = o.supplier;
        uint256 amount = o.amount;
        emit EscrowReleased(orderId, supplier, amount);

        token.safeTransfer(supplier, amount);
    }

    /// @notice Pay order `orderId` back to its agent: by the agent at any time while open, by
    /// anyone once the deadline has passed.
    /// @param orderId The order.
    function refund(bytes32 orderId) external nonReentrant {
        Order storage o = _openOrder(orderId);
        address agent = o.agent;
        if (msg.sender != agent && block.timestamp <= o.deadline) revert EscrowNotAuthorized(msg.sender);
        o.status = Status.Refunded;
        uint256 amount = o.amount;
        emit EscrowRefunded(orderId, agent, amount);

        policy.credit(agent, amount);
        token.safeTransfer(agent, amount);
    }

    /// @notice Order `orderId` (all zero, status None, if unknown).
    /// @param orderId The order.
    /// @return The order.
    function order(bytes32 orderId) external view returns (Order memory) {
        return _orders[orderId];
    }

    function _openOrder(bytes32 orderId) private view returns (Order storage o) {
        o = _orders[orderId];
        if (o.status != Status.Open) revert EscrowNotOpen(orderId, uint8(o.status));
    }
}
