// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title AgentPolicy
/// @notice The rulebook for AI agents that spend: allow-listed counterparties, a per-transaction
/// cap and a budget per period for each agent, and one-off exceptions a human approver grants
/// for a single order above the cap. Contracts that move money (holders of SPENDER_ROLE) call
/// `consume` inside the very transaction that pays, so the rules cannot be bypassed; off-chain
/// callers pre-check with `checkSpend` through eth_call and get the same revert.
contract AgentPolicy is AccessControl {
    /// @notice Role allowed to grant one-off cap exceptions (a human approver).
    bytes32 public constant APPROVER_ROLE = keccak256("APPROVER_ROLE");
    /// @notice Role allowed to record spends and credits (the Escrow contract).
    bytes32 public constant SPENDER_ROLE = keccak256("SPENDER_ROLE");

    /// @notice An agent's limits and its spending in the current period.
    /// @dev Periods are fixed windows of `periodSeconds` starting at `periodStart`.
    struct Limits {
        uint256 perTxCap;
        uint256 periodBudget;
        uint256 spent;
        uint64 periodSeconds;
        uint64 periodStart;
        bool configured;
    }

    /// @notice A one-off permission to exceed the per-transaction cap for one order.
    struct Exception {
        address agent;
        address counterparty;
        uint256 amount;
        bool used;
    }

    mapping(address agent => Limits) private _limits;
    mapping(address counterparty => bool) private _allowed;
    mapping(bytes32 orderId => Exception) private _exceptions;

    /// @notice An agent's limits were set.
    event AgentConfigured(address indexed agent, uint256 perTxCap, uint256 periodBudget, uint64 periodSeconds);
    /// @notice A counterparty was added to or removed from the allow-list.
    event CounterpartyUpdated(address indexed counterparty, bool allowed);
    /// @notice An approver allowed order `orderId` to exceed the per-transaction cap up to `amount`.
    event ExceptionGranted(
        bytes32 indexed orderId, address indexed agent, address indexed counterparty, uint256 amount
    );
    /// @notice A spend was recorded against an agent's budget.
    event SpendRecorded(
        address indexed agent, address indexed counterparty, bytes32 indexed orderId, uint256 amount
    );
    /// @notice Refunded money was credited back to an agent's budget.
    event BudgetCredited(address indexed agent, uint256 amount);

    /// @notice The agent has no limits set, so it may not spend.
    error PolicyUnknownAgent(address agent);
    /// @notice The counterparty is not on the allow-list.
    error PolicyCounterpartyNotAllowed(address counterparty);
    /// @notice The amount exceeds the per-transaction cap (or the order's exception).
    error PolicyCapExceeded(uint256 amount, uint256 cap);
    /// @notice The amount exceeds what is left of the period's budget.
    error PolicyBudgetExceeded(uint256 amount, uint256 remaining);
    /// @notice A period must last at least one second.
    error PolicyInvalidPeriod();
    /// @notice The order's exception was used already.
    error PolicyExceptionAlreadyUsed(bytes32 orderId);

    /// @notice The deployer becomes the admin; approvers and spenders are granted explicitly.
    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Set `agent`'s limits. Spending already recorded in the current period is kept.
    /// @param agent The agent's address (the account that opens escrows).
    /// @param perTxCap Largest amount per spend, in token units.
    /// @param periodBudget Total amount per period, in token units.
    /// @param periodSeconds Length of a budget period.
    function setAgent(address agent, uint256 perTxCap, uint256 periodBudget, uint64 periodSeconds)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        if (periodSeconds == 0) revert PolicyInvalidPeriod();
        Limits memory l = _limits[agent];
        if (l.configured) {
            l = _rolled(l);
        } else {
            l.periodStart = uint64(block.timestamp);
            l.configured = true;
        }
        l.perTxCap = perTxCap;
        l.periodBudget = periodBudget;
        l.periodSeconds = periodSeconds;
        _limits[agent] = l;
        emit AgentConfigured(agent, perTxCap, periodBudget, periodSeconds);
    }

    /// @notice Add `counterparty` to, or remove it from, the allow-list.
    /// @param counterparty The payee.
    /// @param allowed Whether agents may pay it.
    function setCounterparty(address counterparty, bool allowed) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _allowed[counterparty] = allowed;
        emit CounterpartyUpdated(counterparty, allowed);
    }

    /// @notice Whether agents may pay `counterparty`.
    /// @param counterparty The payee.
    /// @return True if allow-listed.
    function isCounterpartyAllowed(address counterparty) external view returns (bool) {
        return _allowed[counterparty];
    }

    /// @notice Let the one spend with `orderId` exceed the per-transaction cap, up to `amount`.
    /// The allow-list and the period budget still apply.
    /// @param orderId The order the exception is for.
    /// @param agent The agent that will spend.
    /// @param counterparty The payee it will pay.
    /// @param amount The largest amount the spend may have.
    function grantException(bytes32 orderId, address agent, address counterparty, uint256 amount)
        external
        onlyRole(APPROVER_ROLE)
    {
        if (!_limits[agent].configured) revert PolicyUnknownAgent(agent);
        if (_exceptions[orderId].used) revert PolicyExceptionAlreadyUsed(orderId);
        _exceptions[orderId] = Exception({agent: agent, counterparty: counterparty, amount: amount, used: false});
        emit ExceptionGranted(orderId, agent, counterparty, amount);
    }

    /// @notice Check a spend without recording it; meant for eth_call pre-checks.
    /// @dev Reverts with exactly the error `consume` would raise for the same spend now.
    /// @param agent The spending agent.
    /// @param counterparty The payee.
    /// @param amount The amount in token units.
    /// @param orderId The order (selects a granted exception, if any).
    /// @return Always true; a refused spend reverts.
    function checkSpend(address agent, address counterparty, uint256 amount, bytes32 orderId)
        external
        view
        returns (bool)
    {
        _check(agent, counterparty, amount, orderId);
        return true;
    }

    /// @notice Check and record a spend. Called by the contract that moves the money.
    /// @param agent The spending agent.
    /// @param counterparty The payee.
    /// @param amount The amount in token units.
    /// @param orderId The order (its exception, if any, is used up).
    function consume(address agent, address counterparty, uint256 amount, bytes32 orderId)
        external
        onlyRole(SPENDER_ROLE)
    {
        (Limits memory l, bool usesException) = _check(agent, counterparty, amount, orderId);
        l.spent += amount;
        _limits[agent] = l;
        if (usesException) _exceptions[orderId].used = true;
        emit SpendRecorded(agent, counterparty, orderId, amount);
    }

    /// @notice Give `amount` back to `agent`'s budget after a refund (never below zero spent).
    /// @dev Spending from an earlier period is already forgotten, so crediting it is a no-op.
    /// Never reverts for a known spender, so a refund can never be blocked by the policy.
    /// @param agent The agent that was refunded.
    /// @param amount The refunded amount in token units.
    function credit(address agent, uint256 amount) external onlyRole(SPENDER_ROLE) {
        Limits memory l = _limits[agent];
        if (l.configured) {
            l = _rolled(l);
            l.spent = l.spent > amount ? l.spent - amount : 0;
            _limits[agent] = l;
        }
        emit BudgetCredited(agent, amount);
    }

    /// @notice What `agent` may still spend in the current period.
    /// @param agent The agent.
    /// @return The remaining budget in token units (0 for an unknown agent).
    function remainingBudget(address agent) public view returns (uint256) {
        Limits memory l = _limits[agent];
        if (!l.configured) return 0;
        l = _rolled(l);
        return l.spent >= l.periodBudget ? 0 : l.periodBudget - l.spent;
    }

    /// @notice `agent`'s limits, with the period rolled forward to now.
    /// @param agent The agent.
    /// @return The limits (all zero for an unknown agent).
    function limits(address agent) external view returns (Limits memory) {
        Limits memory l = _limits[agent];
        return l.configured ? _rolled(l) : l;
    }

    /// @notice The exception granted for `orderId`, if any.
    /// @param orderId The order.
    /// @return The exception (all zero if none).
    function exceptionOf(bytes32 orderId) external view returns (Exception memory) {
        return _exceptions[orderId];
    }

    /// @dev The checks shared by checkSpend and consume, in the order a caller sees them.
    function _check(address agent, address counterparty, uint256 amount, bytes32 orderId)
        private
        view
        returns (Limits memory l, bool usesException)
    {
        l = _limits[agent];
        if (!l.configured) revert PolicyUnknownAgent(agent);
        if (!_allowed[counterparty]) revert PolicyCounterpartyNotAllowed(counterparty);
        uint256 cap = l.perTxCap;
        Exception storage ex = _exceptions[orderId];
        if (!ex.used && ex.agent == agent && ex.counterparty == counterparty && ex.agent != address(0)) {
            usesException = true;
            if (ex.amount > cap) cap = ex.amount;
        }
        if (amount > cap) revert PolicyCapExceeded(amount, cap);
        l = _rolled(l);
        uint256 remaining = l.spent >= l.periodBudget ? 0 : l.periodBudget - l.spent;
        if (amount > remaining) revert PolicyBudgetExceeded(amount, remaining);
    }

    /// @dev Move the period forward to the window containing now, forgetting older spending.
    function _rolled(Limits memory l) private view returns (Limits memory) {
        uint256 end = uint256(l.periodStart) + l.periodSeconds;
        if (block.timestamp >= end) {
            uint256 elapsed = block.timestamp - l.periodStart;
            l.periodStart += uint64(elapsed - (elapsed % l.periodSeconds));
            l.spent = 0;
        }
        return l;
    }
}
