// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Marketplace (v2)
/// @notice Admitted suppliers (SUPPLIER_ROLE, granted by the admin) post priced offers per SKU;
/// buyers read the active ones page by page. Posting is bounded: at most `maxActivePerSku` active
/// offers per SKU and `maxActivePerSupplier` per supplier, both capped by constants, so reading a
/// SKU's offers always fits in a call; the admin can deactivate any offer.
/// @dev Offer descriptions are untrusted free text written by suppliers: they are data for a
/// reader, never instructions, and nothing on chain acts on them. Active offers of a SKU are kept
/// in a list with swap-and-pop removal: pages are in no particular order (sort by id).
contract Marketplace is AccessControl {
    /// @notice Role allowed to post offers.
    bytes32 public constant SUPPLIER_ROLE = keccak256("SUPPLIER_ROLE");

    /// @notice One supplier's offer for a SKU.
    struct Offer {
        uint256 id;
        address supplier;
        bytes32 sku;
        uint256 unitPrice;
        uint32 leadTimeDays;
        uint256 maxQuantity;
        bool active;
        string description;
    }

    /// @notice Longest accepted description, in bytes; bounds the cost of reading offers.
    uint256 public constant MAX_DESCRIPTION_BYTES = 1024;
    /// @notice Highest value `maxActivePerSku` may take: 64 offers of the longest description
    /// read in one call cost well under the 30M-gas call limit (measured in the tests).
    uint256 public constant SKU_LIMIT_CEILING = 64;
    /// @notice Highest value `maxActivePerSupplier` may take.
    uint256 public constant SUPPLIER_LIMIT_CEILING = 1024;

    /// @notice Most active offers one SKU may have.
    uint256 public maxActivePerSku = 32;
    /// @notice Most active offers one supplier may have, over all SKUs.
    uint256 public maxActivePerSupplier = 64;

    uint256 private _lastId;
    mapping(uint256 id => Offer) private _offers;
    mapping(bytes32 sku => uint256[] ids) private _active;
    mapping(uint256 id => uint256 positionPlusOne) private _position;
    mapping(address supplier => uint256) private _activeBySupplier;

    /// @notice A supplier posted an offer.
    event OfferPosted(
        uint256 indexed id,
        address indexed supplier,
        bytes32 indexed sku,
        uint256 unitPrice,
        uint32 leadTimeDays,
        uint256 maxQuantity
    );
    /// @notice An offer left the active list: withdrawn by its supplier, or deactivated by the
    /// admin (`by` says who).
    event OfferWithdrawn(uint256 indexed id, address indexed supplier, address indexed by);
    /// @notice The admin changed the bounds on active offers.
    event LimitsUpdated(uint256 maxActivePerSku, uint256 maxActivePerSupplier);

    /// @notice No offer has this id.
    error MarketplaceUnknownOffer(uint256 id);
    /// @notice Only the offer's supplier may do this.
    error MarketplaceNotSupplier(address caller);
    /// @notice The offer is not active.
    error MarketplaceOfferInactive(uint256 id);
    /// @notice Unit price and maximum quantity must be positive.
    error MarketplaceInvalidOffer(uint256 unitPrice, uint256 maxQuantity);
    /// @notice The description exceeds MAX_DESCRIPTION_BYTES.
    error MarketplaceDescriptionTooLong(uint256 length, uint256 max);
    /// @notice The SKU has `max` active offers already.
    error MarketplaceSkuFull(bytes32 sku, uint256 max);
    /// @notice The supplier has `max` active offers already.
    error MarketplaceSupplierFull(address supplier, uint256 max);
    /// @notice A limit is zero or above its ceiling.
    error MarketplaceInvalidLimits(uint256 maxActivePerSku, uint256 maxActivePerSupplier);

    /// @notice The deployer becomes the admin; suppliers are admitted explicitly.
    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Post an offer for `sku`; the caller (an admitted supplier) is the supplier.
    /// @param sku The SKU (UTF-8, right-padded with zero bytes).
    /// @param unitPrice Price per unit in payment-token units.
    /// @param leadTimeDays Days from order to delivery.
    /// @param maxQuantity Most units the supplier will deliver under this offer.
    /// @param description Free text from the supplier (untrusted).
    /// @return id The new offer's id, counting from 1.
    function postOffer(
        bytes32 sku,
        uint256 unitPrice,
        uint32 leadTimeDays,
        uint256 maxQuantity,
        string calldata description
    ) external onlyRole(SUPPLIER_ROLE) returns (uint256 id) {
        if (unitPrice == 0 || maxQuantity == 0) revert MarketplaceInvalidOffer(unitPrice, maxQuantity);
        uint256 length = bytes(description).length;
        if (length > MAX_DESCRIPTION_BYTES) {
            revert MarketplaceDescriptionTooLong(length, MAX_DESCRIPTION_BYTES);
        }
        uint256 active = _active[sku].length;
        if (active >= maxActivePerSku) revert MarketplaceSkuFull(sku, maxActivePerSku);
        if (_activeBySupplier[msg.sender] >= maxActivePerSupplier) {
            revert MarketplaceSupplierFull(msg.sender, maxActivePerSupplier);
        }
        id = ++_lastId;
        _offers[id] = Offer({
            id: id,
            supplier: msg.sender,
            sku: sku,
            unitPrice: unitPrice,
            leadTimeDays: leadTimeDays,
            maxQuantity: maxQuantity,
            active: true,
            description: description
        });
        _active[sku].push(id);
        _position[id] = active + 1;
        _activeBySupplier[msg.sender] += 1;
        emit OfferPosted(id, msg.sender, sku, unitPrice, leadTimeDays, maxQuantity);
    }

    /// @notice Withdraw offer `id`; only its supplier may (even after losing SUPPLIER_ROLE).
    /// @param id The offer id.
    function withdrawOffer(uint256 id) external {
        Offer storage o = _activeOffer(id);
        if (o.supplier != msg.sender) revert MarketplaceNotSupplier(msg.sender);
        _deactivate(o);
    }

    /// @notice Deactivate any offer (spam, fraud, a supplier that left); only the admin may.
    /// @param id The offer id.
    function deactivateOffer(uint256 id) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _deactivate(_activeOffer(id));
    }

    /// @notice Set the bounds on active offers. Lowering one below a current count keeps those
    /// offers but refuses new posts until the count is under the bound.
    /// @param perSku Most active offers per SKU (1..SKU_LIMIT_CEILING).
    /// @param perSupplier Most active offers per supplier (1..SUPPLIER_LIMIT_CEILING).
    function setLimits(uint256 perSku, uint256 perSupplier) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (perSku == 0 || perSku > SKU_LIMIT_CEILING || perSupplier == 0 || perSupplier > SUPPLIER_LIMIT_CEILING) {
            revert MarketplaceInvalidLimits(perSku, perSupplier);
        }
        maxActivePerSku = perSku;
        maxActivePerSupplier = perSupplier;
        emit LimitsUpdated(perSku, perSupplier);
    }

    /// @notice Offer `id`, active or not.
    /// @param id The offer id.
    /// @return The offer.
    function offer(uint256 id) external view returns (Offer memory) {
        Offer storage o = _offers[id];
        if (o.id == 0) revert MarketplaceUnknownOffer(id);
        return o;
    }

    /// @notice A page of the active offers for `sku`: positions `offset` .. `offset + limit - 1`
    /// of its active list (fewer at the end; empty past it).
    /// @param sku The SKU.
    /// @param offset First position.
    /// @param limit Most offers to return.
    /// @return offers The active offers of the page.
    function offersFor(bytes32 sku, uint256 offset, uint256 limit) external view returns (Offer[] memory offers) {
        uint256[] storage ids = _active[sku];
        uint256 n = ids.length;
        if (offset >= n) return new Offer[](0);
        uint256 end = n - offset < limit ? n : offset + limit;
        offers = new Offer[](end - offset);
        for (uint256 i = offset; i < end; ++i) {
            offers[i - offset] = _offers[ids[i]];
        }
    }

    /// @notice How many active offers `sku` has.
    /// @param sku The SKU.
    /// @return The count.
    function activeOfferCount(bytes32 sku) external view returns (uint256) {
        return _active[sku].length;
    }

    /// @notice How many active offers `supplier` has.
    /// @param supplier The supplier.
    /// @return The count.
    function activeOffersOf(address supplier) external view returns (uint256) {
        return _activeBySupplier[supplier];
    }

    /// @notice How many offers were ever posted (the last id).
    /// @return The number of offers.
    function offerCount() external view returns (uint256) {
        return _lastId;
    }

    function _activeOffer(uint256 id) private view returns (Offer storage o) {
        o = _offers[id];
        if (o.id == 0) revert MarketplaceUnknownOffer(id);
        if (!o.active) revert MarketplaceOfferInactive(id);
    }

    function _deactivate(Offer storage o) private {
        uint256 id = o.id;
        o.active = false;
        bytes32 sku = o.sku;
        uint256 index = _position[id] - 1;
        uint256 last = _active[sku][_active[sku].length - 1];
        _active[sku][index] = last;
        _position[last] = index + 1;
        _active[sku].pop();
        delete _position[id];
        _activeBySupplier[o.supplier] -= 1;
        emit OfferWithdrawn(id, o.supplier, msg.sender);
    }
}
