// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title InventoryLedger (v2)
/// @notice Stock levels per SKU with a reorder threshold and target. Consumption below the
/// threshold emits `ShortfallDetected`, which starts a procurement workflow; restocks are keyed
/// by an order id applied at most once, so a retried activity cannot restock twice.
/// @notice A purchase first reserves its quantity against the shortfall (`reserve`): the ledger
/// refuses a reservation beyond the shortfall minus the open reservations, so the contract, not
/// only the workflow, refuses over-buying, and concurrent runs cannot buy the same shortfall
/// twice. The reservation ends with the restock of that order or with `cancelReservation` (the
/// purchase's compensation).
contract InventoryLedger is AccessControl {
    /// @notice Role allowed to restock (the orchestrator, after a purchase settles).
    bytes32 public constant ORCHESTRATOR_ROLE = keccak256("ORCHESTRATOR_ROLE");
    /// @notice Role allowed to consume stock (warehouse operators, point-of-sale systems).
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");

    struct Item {
        uint256 stock;
        uint256 threshold;
        uint256 target;
        bool configured;
    }

    /// @notice Lifecycle of a reservation: None -> Open -> Filled | Cancelled.
    enum ReservationStatus {
        None,
        Open,
        Filled,
        Cancelled
    }

    /// @notice Quantity of `sku` reserved by one purchase order.
    struct Reservation {
        bytes32 sku;
        uint128 qty;
        ReservationStatus status;
    }

    mapping(bytes32 sku => Item) private _items;
    mapping(bytes32 orderId => bool) private _appliedOrders;
    mapping(bytes32 sku => uint256) private _reserved;
    mapping(bytes32 orderId => Reservation) private _reservations;

    /// @notice An item was configured (or reconfigured) by the admin.
    event ItemConfigured(bytes32 indexed sku, uint256 stock, uint256 threshold, uint256 target);
    /// @notice `qty` units were consumed, leaving `stock`.
    event Consumed(bytes32 indexed sku, uint256 qty, uint256 stock);
    /// @notice `qty` units arrived for `orderId`, giving `stock`.
    event Restocked(bytes32 indexed sku, bytes32 indexed orderId, uint256 qty, uint256 stock);
    /// @notice Stock is below the threshold; `needed` units bring it back to the target.
    event ShortfallDetected(bytes32 indexed sku, uint256 stock, uint256 threshold, uint256 needed);
    /// @notice Order `orderId` reserved `qty` units of the shortfall; `reserved` are reserved now.
    event Reserved(bytes32 indexed sku, bytes32 indexed orderId, uint256 qty, uint256 reserved);
    /// @notice A reservation ended: filled by its restock, or cancelled (`filled` false).
    event ReservationReleased(bytes32 indexed sku, bytes32 indexed orderId, uint256 qty, bool filled);

    /// @notice The SKU was never configured.
    error InventoryUnknownSku(bytes32 sku);
    /// @notice Consuming `qty` would take the stock below zero.
    error InventoryInsufficientStock(bytes32 sku, uint256 stock, uint256 qty);
    /// @notice A restock with this order id was applied before.
    error InventoryOrderAlreadyApplied(bytes32 orderId);
    /// @notice The target must be at least the threshold.
    error InventoryInvalidTarget(uint256 threshold, uint256 target);
    /// @notice A reservation needs a positive quantity that fits in 128 bits.
    error InventoryInvalidQuantity(uint256 qty);
    /// @notice `qty` exceeds the shortfall not yet reserved by other orders (`available`).
    error InventoryReservationExceedsShortfall(bytes32 sku, uint256 qty, uint256 available);
    /// @notice The order has (or had) a reservation already.
    error InventoryReservationExists(bytes32 orderId);
    /// @notice The order's reservation is not open (`status` is its ReservationStatus).
    error InventoryReservationNotOpen(bytes32 orderId, uint8 status);
    /// @notice The order's reservation is for another SKU.
    error InventoryReservationSkuMismatch(bytes32 orderId, bytes32 reservedSku, bytes32 sku);

    /// @notice The deployer becomes the admin; roles are granted explicitly.
    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Configure `sku` with its current stock, reorder threshold and target level.
    /// @param sku The SKU (UTF-8, right-padded with zero bytes).
    /// @param stock Units on hand.
    /// @param threshold Below this stock level a shortfall is reported.
    /// @param target The level a restock should bring the stock back to (>= threshold).
    function setItem(bytes32 sku, uint256 stock, uint256 threshold, uint256 target)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        if (target < threshold) revert InventoryInvalidTarget(threshold, target);
        _items[sku] = Item({stock: stock, threshold: threshold, target: target, configured: true});
        emit ItemConfigured(sku, stock, threshold, target);
        if (stock < threshold) emit ShortfallDetected(sku, stock, threshold, target - stock);
    }

    /// @notice Take `qty` units of `sku` out of stock; reports a shortfall below the threshold.
    /// @param sku The SKU.
    /// @param qty Units consumed.
    function consume(bytes32 sku, uint256 qty) external onlyRole(OPERATOR_ROLE) {
        Item storage it = _knownItem(sku);
        uint256 stock = it.stock;
        if (qty > stock) revert InventoryInsufficientStock(sku, stock, qty);
        stock -= qty;
        it.stock = stock;
        emit Consumed(sku, qty, stock);
        uint256 threshold = it.threshold;
        if (stock < threshold) emit ShortfallDetected(sku, stock, threshold, it.target - stock);
    }

    /// @notice Reserve `qty` units of `sku`'s shortfall for purchase order `orderId`.
    /// @dev Reverts unless `qty <= shortfall(sku) - reserved(sku)`; one reservation per order.
    /// @param sku The SKU.
    /// @param qty Units the order will buy.
    /// @param orderId The purchase order's idempotency key.
    function reserve(bytes32 sku, uint256 qty, bytes32 orderId) external onlyRole(ORCHESTRATOR_ROLE) {
        _knownItem(sku);
        if (qty == 0 || qty > type(uint128).max) revert InventoryInvalidQuantity(qty);
        if (_reservations[orderId].status != ReservationStatus.None) revert InventoryReservationExists(orderId);
        uint256 free = available(sku);
        if (qty > free) revert InventoryReservationExceedsShortfall(sku, qty, free);
        _reservations[orderId] = Reservation({sku: sku, qty: uint128(qty), status: ReservationStatus.Open});
        uint256 total = _reserved[sku] + qty;
        _reserved[sku] = total;
        emit Reserved(sku, orderId, qty, total);
    }

    /// @notice Cancel the open reservation of `orderId` (the purchase was compensated).
    /// @param orderId The purchase order's idempotency key.
    function cancelReservation(bytes32 orderId) external onlyRole(ORCHESTRATOR_ROLE) {
        Reservation storage r = _reservations[orderId];
        if (r.status != ReservationStatus.Open) revert InventoryReservationNotOpen(orderId, uint8(r.status));
        r.status = ReservationStatus.Cancelled;
        _reserved[r.sku] -= r.qty;
        emit ReservationReleased(r.sku, orderId, r.qty, false);
    }

    /// @notice Add `qty` units of `sku` delivered under `orderId`; each order id applies once.
    /// An open reservation of the order is filled by it.
    /// @param sku The SKU.
    /// @param qty Units received.
    /// @param orderId The purchase order's idempotency key.
    function restock(bytes32 sku, uint256 qty, bytes32 orderId) external onlyRole(ORCHESTRATOR_ROLE) {
        Item storage it = _knownItem(sku);
        if (_appliedOrders[orderId]) revert InventoryOrderAlreadyApplied(orderId);
        Reservation storage r = _reservations[orderId];
        bool filling = r.status == ReservationStatus.Open;
        if (filling && r.sku != sku) revert InventoryReservationSkuMismatch(orderId, r.sku, sku);
        _appliedOrders[orderId] = true;
        uint256 stock = it.stock + qty;
        it.stock = stock;
        if (filling) {
            r.status = ReservationStatus.Filled;
            _reserved[sku] -= r.qty;
        }
        emit Restocked(sku, orderId, qty, stock);
        if (filling) emit ReservationReleased(sku, orderId, r.qty, true);
    }

    /// @notice The stock, threshold and target of `sku` (all zero if unknown).
    /// @param sku The SKU.
    /// @return stock Units on hand.
    /// @return threshold The reorder threshold.
    /// @return target The restock target.
    function item(bytes32 sku) external view returns (uint256 stock, uint256 threshold, uint256 target) {
        Item storage it = _items[sku];
        return (it.stock, it.threshold, it.target);
    }

    /// @notice Units needed to bring `sku` back to its target, if it is below its threshold.
    /// @param sku The SKU.
    /// @return target - stock when stock < threshold, else 0.
    function shortfall(bytes32 sku) public view returns (uint256) {
        Item storage it = _items[sku];
        return it.stock < it.threshold ? it.target - it.stock : 0;
    }

    /// @notice Units of `sku` reserved by open purchase orders.
    /// @param sku The SKU.
    /// @return The reserved quantity.
    function reserved(bytes32 sku) external view returns (uint256) {
        return _reserved[sku];
    }

    /// @notice Units of `sku`'s shortfall no open order has reserved yet.
    /// @param sku The SKU.
    /// @return shortfall(sku) - reserved(sku), or 0.
    function available(bytes32 sku) public view returns (uint256) {
        uint256 needed = shortfall(sku);
        uint256 held = _reserved[sku];
        return needed > held ? needed - held : 0;
    }

    /// @notice The reservation of `orderId` (all zero, status None, if none).
    /// @param orderId The purchase order's idempotency key.
    /// @return The reservation.
    function reservation(bytes32 orderId) external view returns (Reservation memory) {
        return _reservations[orderId];
    }

    /// @notice Whether a restock with `orderId` was applied.
    /// @param orderId The purchase order's idempotency key.
    /// @return True once the order has been applied.
    function orderApplied(bytes32 orderId) external view returns (bool) {
        return _appliedOrders[orderId];
    }

    function _knownItem(bytes32 sku) private view returns (Item storage it) {
        it = _items[sku];
        if (!it.configured) revert InventoryUnknownSku(sku);
    }
}
