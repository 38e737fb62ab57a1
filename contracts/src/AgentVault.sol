// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title AgentVault
/// @notice The treasury that holds each agent's tokens, so the agent's own key holds none. Value
/// leaves only two ways: to the Escrow (PAYER_ROLE) when it opens a policy-checked order for that
/// agent, and to wherever the admin (a multisig in production) withdraws it. A stolen agent key
/// alone can therefore move nothing beyond what the AgentPolicy lets `Escrow.open` pay.
/// @dev Balances are internal accounting; `totalHeld` equals the sum of all balances, and the
/// token balance of this contract is at least that (tokens sent here without `deposit` are not
/// credited to anyone). Plain ERC-20 tokens only (no fee-on-transfer, no rebasing).
contract AgentVault is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice Role allowed to pull an agent's tokens for a payment (the Escrow contract).
    bytes32 public constant PAYER_ROLE = keccak256("PAYER_ROLE");

    /// @notice The token held.
    IERC20 public immutable token;

    mapping(address agent => uint256) private _balances;
    uint256 private _totalHeld;

    /// @notice `from` deposited `amount` for `agent`.
    event Deposited(address indexed agent, address indexed from, uint256 amount);
    /// @notice The payer took `amount` of `agent`'s tokens for a payment.
    event Pulled(address indexed agent, address indexed payer, uint256 amount);
    /// @notice The admin withdrew `amount` of `agent`'s tokens to `to`.
    event Withdrawn(address indexed agent, address indexed to, uint256 amount);

    /// @notice Nothing to move.
    error VaultZeroAmount();
    /// @notice `agent` holds `balance`, less than `amount`.
    error VaultInsufficientBalance(address agent, uint256 balance, uint256 amount);

    /// @param token_ The token held.
    constructor(IERC20 token_) {
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Deposit `amount` from the caller for `agent` (the caller must have approved this
    /// contract). Anyone may top an agent up; the Escrow returns refunds this way.
    /// @param agent The agent credited.
    /// @param amount Token units.
    function deposit(address agent, uint256 amount) external nonReentrant {
        if (amount == 0) revert VaultZeroAmount();
        _balances[agent] += amount;
        _totalHeld += amount;
        emit Deposited(agent, msg.sender, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Send `amount` of `agent`'s tokens to the caller, the payer (the Escrow).
    /// @param agent The agent paying.
    /// @param amount Token units.
    function pull(address agent, uint256 amount) external onlyRole(PAYER_ROLE) nonReentrant {
        _debit(agent, amount);
        emit Pulled(agent, msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Withdraw `amount` of `agent`'s tokens to `to`; only the admin may.
    /// @param agent The agent debited.
    /// @param to The recipient.
    /// @param amount Token units.
    function withdraw(address agent, address to, uint256 amount)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
        nonReentrant
    {
        _debit(agent, amount);
        emit Withdrawn(agent, to, amount);
        token.safeTransfer(to, amount);
    }

    /// @notice Revert with the error `pull` would raise for `amount` of `agent`'s tokens.
    /// @param agent The agent.
    /// @param amount Token units.
    function checkPull(address agent, uint256 amount) external view {
        if (amount == 0) revert VaultZeroAmount();
        uint256 balance = _balances[agent];
        if (amount > balance) revert VaultInsufficientBalance(agent, balance, amount);
    }

    /// @notice The tokens held for `agent`.
    /// @param agent The agent.
    /// @return Token units.
    function balanceOf(address agent) external view returns (uint256) {
        return _balances[agent];
    }

    /// @notice The sum of every agent's balance.
    /// @return Token units.
    function totalHeld() external view returns (uint256) {
        return _totalHeld;
    }

    function _debit(address agent, uint256 amount) private {
        if (amount == 0) revert VaultZeroAmount();
        uint256 balance = _balances[agent];
        if (amount > balance) revert VaultInsufficientBalance(agent, balance, amount);
        _balances[agent] = balance - amount;
        _totalHeld -= amount;
    }
}
