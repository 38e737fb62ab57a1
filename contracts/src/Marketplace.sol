// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Marketplace
/// @notice Suppliers post priced offers per SKU; buyers read the active ones.
/// @dev Anyone may post. Offer descriptions are untrusted free text written by suppliers: they are
/// data for a reader, never instructions, and nothing on chain acts on them.
contract Marketplace {
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

    uint256 private _lastId;
    mapping(uint256 id => Offer) private _offers;
    mapping(bytes32 sku => uint256[] ids) private _offerIds;

    /// @notice A supplier posted an offer.
    event OfferPosted(
        uint256 indexed id,
        address indexed supplier,
        bytes32 indexed sku,
        uint256 unitPrice,
        uint32 leadTimeDays,
        uint256 maxQuantity
    );
    /// @notice A supplier withdrew an offer.
    event OfferWithdrawn(uint256 indexed id, address indexed supplier);

    /// @notice No offer has this id.
    error MarketplaceUnknownOffer(uint256 id);
    /// @notice Only the offer's supplier may do this.
    error MarketplaceNotSupplier(address caller);
    /// @notice The offer was withdrawn already.
    error MarketplaceOfferInactive(uint256 id);
    /// @notice Unit price and maximum quantity must be positive.
    error MarketplaceInvalidOffer(uint256 unitPrice, uint256 maxQuantity);
    /// @notice The description exceeds MAX_DESCRIPTION_BYTES.
    error MarketplaceDescriptionTooLong(uint256 length, uint256 max);

    /// @notice Post an offer for `sku`; the caller is the supplier.
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
    ) external returns (uint256 id) {
        if (unitPrice == 0 || maxQuantity == 0) revert MarketplaceInvalidOffer(unitPrice, maxQuantity);
        uint256 length = bytes(description).length;
        if (length > MAX_DESCRIPTION_BYTES) {
            revert MarketplaceDescriptionTooLong(length, MAX_DESCRIPTION_BYTES);
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
        _offerIds[sku].push(id);
        emit OfferPosted(id, msg.sender, sku, unitPrice, leadTimeDays, maxQuantity);
    }

    /// @notice Withdraw offer `id`; only its supplier may.
    /// @param id The offer id.
    function withdrawOffer(uint256 id) external {
        Offer storage o = _offers[id];
        if (o.id == 0) revert MarketplaceUnknownOffer(id);
        if (o.supplier != msg.sender) revert MarketplaceNotSupplier(msg.sender);
        if (!o.active) revert MarketplaceOfferInactive(id);
        o.active = false;
        emit OfferWithdrawn(id, msg.sender);
    }

    /// @notice Offer `id`, active or not.
    /// @param id The offer id.
    /// @return The offer.
    function offer(uint256 id) external view returns (Offer memory) {
        Offer storage o = _offers[id];
        if (o.id == 0) revert MarketplaceUnknownOffer(id);
        return o;
    }

    /// @notice The active offers for `sku`, oldest first.
    /// @param sku The SKU.
    /// @return offers The active offers.
    function offersFor(bytes32 sku) external view returns (Offer[] memory offers) {
        uint256[] storage ids = _offerIds[sku];
        uint256 count;
        for (uint256 i; i < ids.length; ++i) {
            if (_offers[ids[i]].active) ++count;
        }
        offers = new Offer[](count);
        uint256 j;
        for (uint256 i; i < ids.length; ++i) {
            Offer storage o = _offers[ids[i]];
            if (o.active) offers[j++] = o;
        }
    }

    /// @notice How many offers were ever posted (the last id).
    /// @return The number of offers.
    function offerCount() external view returns (uint256) {
        return _lastId;
    }
}
