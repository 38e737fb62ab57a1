"""C2PA content credentials for content that ledgerflow registered.

:func:`embed` writes a signed C2PA manifest into an asset (PNG, JPEG, WebP, TIFF, MP4, PDF, ...:
whatever the installed c2pa library lists); :func:`read` finds it again and says whether the
asset is as signed. The manifest carries two assertions:

* ``c2pa.actions`` with one ``c2pa.created`` action whose ``digitalSourceType`` is an IPTC
  digital source type: ``trainedAlgorithmicMedia`` for AI-generated content, which is the
  machine-readable marking C2PA readers and platforms look for;
* ``org.ledgerflow.provenance`` (:data:`ASSERTION_LABEL`): the :class:`CredentialClaim` (claim
  hash, content hash of the original, workflow, run, step, anchor), so a holder of the file can
  find the on-chain registration without the operator's store.

The manifest is signed (COSE) with the operator's certificate chain and private key
(:class:`CredentialSigner`); a hard binding (``c2pa.hash.data``) covers every byte of the asset
outside the manifest, so a changed pixel is reported as ``altered``.

Both functions are synchronous and CPU-bound (the c2pa-rs library through ctypes): call them from
an activity with ``asyncio.to_thread``, never from workflow code. docs/content-credentials.md
describes the credential for users.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretBytes,
    ValidationError,
    model_validator,
)

from ledgerflow.errors import ConfigError, CredentialError, UnsupportedMediaType, bounded
from ledgerflow.types import Address, Bytes32, StrictModel

if TYPE_CHECKING:
    from ledgerflow.settings import Settings

__all__ = [
    "AI_SOURCE_TYPES",
    "ASSERTION_LABEL",
    "SIGNING_EKUS",
    "CredentialAnchor",
    "CredentialClaim",
    "CredentialReport",
    "CredentialSigner",
    "DigitalSourceType",
    "SignerIdentity",
    "ValidationEntry",
    "embed",
    "read",
    "supported_media_types",
    "trust_anchors_from_settings",
]

#: Label of ledgerflow's own assertion in the manifest (reverse-domain, as C2PA asks of
#: custom assertions).
ASSERTION_LABEL = "org.ledgerflow.provenance"

_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"

#: The name the manifest gives its generator (``claim_generator_info``).
GENERATOR_NAME = "ledgerflow"


class DigitalSourceType(StrEnum):
    """The IPTC digital source types ledgerflow writes (IPTC NewsCodes ``digitalsourcetype``)."""

    #: Created by a generative model from a prompt or other inputs: AI-generated content.
    TRAINED_ALGORITHMIC_MEDIA = _IPTC + "trainedAlgorithmicMedia"
    #: A composite with at least one element made by a generative model.
    COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA = _IPTC + "compositeWithTrainedAlgorithmicMedia"
    #: Captured from the real world by a camera, scanner or microphone.
    DIGITAL_CAPTURE = _IPTC + "digitalCapture"
    #: Made by a person with digital tools that are not generative models.
    DIGITAL_CREATION = _IPTC + "digitalCreation"
    #: A person's edits of existing media.
    HUMAN_EDITS = _IPTC + "humanEdits"


#: Source types that mark content as AI-generated (wholly or in part).
AI_SOURCE_TYPES = frozenset(
    {
        DigitalSourceType.TRAINED_ALGORITHMIC_MEDIA.value,
        DigitalSourceType.COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA.value,
        # IPTC types a foreign manifest may carry that also mean "made by a model".
        _IPTC + "compositeSynthetic",
    }
)

#: The source type an origin gets when the claim does not name one.
_DEFAULT_SOURCE = {
    "synthetic": DigitalSourceType.TRAINED_ALGORITHMIC_MEDIA,
    "human": DigitalSourceType.DIGITAL_CREATION,
}

SigningAlgorithm = Literal["ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "Ed25519"]

_C2PA_ALG = {
    "ES256": c2pa.C2paSigningAlg.ES256,
    "ES384": c2pa.C2paSigningAlg.ES384,
    "ES512": c2pa.C2paSigningAlg.ES512,
    "PS256": c2pa.C2paSigningAlg.PS256,
    "PS384": c2pa.C2paSigningAlg.PS384,
    "PS512": c2pa.C2paSigningAlg.PS512,
    "Ed25519": c2pa.C2paSigningAlg.ED25519,
}

_EC_CURVE = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

#: Validation codes (c2pa-rs) meaning the asset's bytes are not the ones that were signed.
_CONTENT_MISMATCH = (
    "assertion.dataHash.mismatch",
    "assertion.bmffHash.mismatch",
    "assertion.boxesHash.mismatch",
    "assertion.collectionHash.mismatch",
)

_UNTRUSTED = "signingCredential.untrusted"

#: The Extended Key Usages a signing certificate may carry (the C2PA specification's default
#: list): id-kp-emailProtection and id-kp-documentSigning. c2pa-rs is given the same list.
SIGNING_EKUS = {
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "documentSigning": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36"),
}

_TEXT = Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]*$")


# ---- the claim ---------------------------------------------------------------------------------


class CredentialAnchor(StrictModel):
    """Where the registration of the content is anchored.

    ``registry`` is the contract that recorded the registration on chain ``chain_id``; the
    transaction hash, block and Merkle root are known once the step is anchored (a batched step
    is anchored shortly after it is recorded) and may be left out before.
    """

    registry: Address
    chain_id: int = Field(gt=0, lt=2**63)
    tx_hash: Bytes32 | None = None
    block_number: int | None = Field(None, ge=0)
    root: Bytes32 | None = None


class CredentialClaim(StrictModel):
    """What ledgerflow's assertion (:data:`ASSERTION_LABEL`) says about the asset.

    ``content_hash`` is the hash under which the *original* asset (before the manifest was
    embedded) is registered; ``claim_hash`` the hash of the provenance claim registered with it.
    ``origin`` is ``synthetic`` (AI-generated) or ``human``; ``digital_source_type`` defaults from
    it (``trainedAlgorithmicMedia`` or ``digitalCreation``) and must agree with it.
    """

    version: Literal[1] = 1
    claim_hash: Bytes32
    content_hash: Bytes32
    workflow_id: str = _TEXT
    run_id: str = _TEXT
    step_seq: int = Field(ge=0, lt=2**63)
    anchor: CredentialAnchor
    origin: Literal["synthetic", "human"]
    digital_source_type: DigitalSourceType | None = None
    generator: str | None = Field(
        None, min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]*$"
    )  # provider/model that generated the content
    author_did: str | None = Field(None, min_length=1, max_length=512, pattern=r"^did:[a-z0-9]+:")

    @model_validator(mode="after")
    def _source_agrees_with_origin(self) -> CredentialClaim:
        if self.digital_source_type is None:
            self.digital_source_type = _DEFAULT_SOURCE[self.origin]
        ai = self.digital_source_type.value in AI_SOURCE_TYPES
        if ai != (self.origin == "synthetic"):
            raise ValueError(
                f"digital source type {self.digital_source_type.name} does not fit "
                f"origin {self.origin!r}"
            )
        return self


# ---- the signer --------------------------------------------------------------------------------


class CredentialSigner(StrictModel):
    """The operator's C2PA signing identity: a PEM certificate chain (the end-entity certificate
    first, then intermediates; the root may be left out) and the end-entity's PEM private key.

    Checked when made (:class:`~ledgerflow.errors.ConfigError` otherwise): the key belongs to the
    first certificate and fits ``algorithm`` (ES256: P-256, ES384: P-384, ES512: P-521, PS*: RSA,
    Ed25519), and the certificate is what C2PA validators accept: issued by a CA (not
    self-signed), not a CA itself, Key Usage with ``digitalSignature``, an Extended Key Usage
    without ``anyExtendedKeyUsage`` (``emailProtection`` or ``documentSigning``, see
    docs/content-credentials.md), valid now. ``tsa_url``: an RFC 3161 time-stamp authority; off by
    default (a signature without a time stamp stops validating when the certificate expires).
    The key never appears in ``repr``, logs or errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_chain_pem: bytes
    private_key_pem: SecretBytes
    algorithm: SigningAlgorithm = "ES256"
    tsa_url: str | None = Field(None, pattern=r"^https?://")

    # the key as c2pa-rs takes it (PKCS#8 PEM), whatever PEM form was given
    _key_pkcs8: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _check(self) -> CredentialSigner:
        self._key_pkcs8 = _check_signing_credentials(
            self.cert_chain_pem, self.private_key_pem.get_secret_value(), self.algorithm
        )
        return self

    @classmethod
    def from_files(
        cls,
        cert_chain: Path | str,
        private_key: Path | str,
        *,
        algorithm: SigningAlgorithm = "ES256",
        tsa_url: str | None = None,
    ) -> CredentialSigner:
        """A signer from two PEM files.

        Raises:
            ConfigError: a file cannot be read, or the certificate or key is refused.
        """
        chain = _read_file(Path(cert_chain), "certificate chain")
        key = _read_file(Path(private_key), "private key", secret=True)
        try:
            return cls(
                cert_chain_pem=chain,
                private_key_pem=SecretBytes(key),
                algorithm=algorithm,
                tsa_url=tsa_url,
            )
        except ValidationError as exc:
            raise ConfigError(f"C2PA signer: {_first_error(exc)}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialSigner:
        """The signer ``LEDGERFLOW_C2PA_CERT_CHAIN`` and ``LEDGERFLOW_C2PA_PRIVATE_KEY`` name.

        Raises:
            ConfigError: either setting is unset, or :meth:`from_files` refuses the files.
        """
        if settings.c2pa_cert_chain is None or settings.c2pa_private_key is None:
            raise ConfigError(
                "content credentials need LEDGERFLOW_C2PA_CERT_CHAIN and "
                "LEDGERFLOW_C2PA_PRIVATE_KEY (PEM files)"
            )
        return cls.from_files(
            settings.c2pa_cert_chain,
            settings.c2pa_private_key,
            algorithm=settings.c2pa_signing_alg,
            tsa_url=settings.c2pa_tsa_url,
        )


def _read_file(path: Path, what: str, *, secret: bool = False) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        # A secret's path is not named: a misconfigured value may be the key itself.
        name = "file" if secret else bounded(path.name, 80)
        raise ConfigError(f"cannot read the C2PA {what} {name}: {exc.strerror}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return bounded(f"{where}: {err.get('msg', '')}" if where else str(err.get("msg", "")))


def _check_signing_credentials(chain_pem: bytes, key_pem: bytes, algorithm: str) -> bytes:
    """Refuse what C2PA validators would refuse; return the key as PKCS#8 PEM."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ConfigError("the C2PA certificate chain is not PEM certificates") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # no detail: the library's message could describe the key
        raise ConfigError("the C2PA private key is not an unencrypted PEM private key") from None
    leaf = certs[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise ConfigError("the C2PA private key does not belong to the chain's first certificate")
    if algorithm in _EC_CURVE:
        if (
            not isinstance(key, ec.EllipticCurvePrivateKey)
            or key.curve.name != _EC_CURVE[algorithm]
        ):
            raise ConfigError(f"{algorithm} needs an EC key on {_EC_CURVE[algorithm]}")
    elif algorithm.startswith("PS"):
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
            raise ConfigError(f"{algorithm} needs an RSA key of at least 2048 bits")
    elif not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError("Ed25519 needs an Ed25519 key")
    if leaf.issuer == leaf.subject:
        raise ConfigError(
            "the C2PA signing certificate is self-signed: C2PA needs one issued by a CA"
        )
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ConfigError("the C2PA signing certificate is not valid now (expired or not yet)")
    ext = leaf.extensions
    try:
        basic = ext.get_extension_for_class(x509.BasicConstraints).value
        if basic.ca:
            raise ConfigError("the C2PA signing certificate is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = ext.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.digital_signature:
        raise ConfigError("the C2PA signing certificate needs Key Usage digitalSignature")
    try:
        ekus = set(ext.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        ekus = set()
    if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in ekus or not ekus & set(SIGNING_EKUS.values()):
        raise ConfigError(
            "the C2PA signing certificate needs the Extended Key Usage emailProtection or "
            "documentSigning (and not anyExtendedKeyUsage)"
        )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _trust_pem(trust_anchors: bytes | str | None) -> str | None:
    if trust_anchors is None:
        return None
    text = (
        trust_anchors.decode("ascii", "replace")
        if isinstance(trust_anchors, bytes)
        else trust_anchors
    )
    try:
        x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise ConfigError("the C2PA trust anchors are not PEM certificates") from None
    return text


def trust_anchors_from_settings(settings: Settings) -> str | None:
    """The PEM roots ``LEDGERFLOW_C2PA_TRUST_ANCHORS`` names (None when unset).

    Raises:
        ConfigError: the file cannot be read or holds no PEM certificate.
    """
    if settings.c2pa_trust_anchors is None:
        return None
    return _trust_pem(_read_file(settings.c2pa_trust_anchors, "trust anchors"))


# ---- the report --------------------------------------------------------------------------------


class ValidationEntry(StrictModel):
    """One validation result of c2pa-rs (``code`` as in the C2PA specification)."""

    code: str
    explanation: str = ""


class SignerIdentity(StrictModel):
    """Who signed the manifest, as the signing certificate names them."""

    issuer: str | None = None
    common_name: str | None = None
    cert_serial_number: str | None = None
    alg: str | None = None
    time: str | None = None


CredentialStatus = Literal["valid", "untrusted", "altered", "missing"]


class CredentialReport(StrictModel):
    """What :func:`read` found.

    ``status``:

    * ``valid``: the manifest's signature validates, the asset's bytes are those signed, and the
      signing certificate chains to a configured trust anchor;
    * ``untrusted``: signature and bytes check, but the certificate chains to no configured
      anchor (none configured, or another CA's): the manifest is intact, its signer unknown;
    * ``altered``: a manifest is there but does not validate: the asset was changed after
      signing (``content_matches`` false), or the manifest or its signature was;
    * ``missing``: no manifest (never made, or stripped).

    ``claim`` is ledgerflow's assertion when the active manifest has one (``claim_error`` says
    why it could not be read otherwise). It is what the manifest *says*: rely on it only when
    ``status`` is ``valid``, or ``untrusted`` and confirmed by the on-chain registration.
    """

    status: CredentialStatus
    validation_state: str | None = None
    signature_valid: bool = False
    content_matches: bool = False
    trusted: bool = False
    manifest_label: str | None = None
    claim_generator: str | None = None
    digital_source_type: str | None = None
    ai_generated: bool | None = None
    claim: CredentialClaim | None = None
    claim_error: str | None = None
    signer: SignerIdentity | None = None
    failures: list[ValidationEntry] = Field(default_factory=list)


# ---- embed and read ----------------------------------------------------------------------------


def supported_media_types(*, for_embedding: bool = True) -> list[str]:
    """The MIME types the installed c2pa library embeds into (or reads, ``for_embedding=False``)."""
    kinds = c2pa.Builder if for_embedding else c2pa.Reader
    return sorted(m for m in kinds.get_supported_mime_types() if "/" in m)


def _media_type(mime: str, *, for_embedding: bool) -> str:
    media = mime.split(";", 1)[0].strip().lower()
    if media == "image/jpg":
        media = "image/jpeg"
    if media not in supported_media_types(for_embedding=for_embedding):
        verb = "embed content credentials in" if for_embedding else "read content credentials from"
        raise UnsupportedMediaType(
            f"cannot {verb} {bounded(media or '(no media type)', 80)}", mime=media
        )
    return media


def _context(trust_anchors: str | None) -> c2pa.Context:
    config: dict[str, Any] = {
        # Offline and self-contained: no remote manifests, no OCSP; trust only what the
        # operator configured (trust_anchors replaces the library's own list).
        "verify": {
            "verify_after_reading": True,
            "verify_after_sign": True,
            "verify_trust": True,
            "remote_manifest_fetch": False,
            "ocsp_fetch": False,
        },
        "builder": {"thumbnail": {"enabled": False}},
        "trust": {
            "trust_config": "".join(f"{oid.dotted_string}\n" for oid in SIGNING_EKUS.values())
        },
    }
    if trust_anchors is not None:
        config["trust"]["trust_anchors"] = trust_anchors
    return c2pa.Context.from_dict(config)


#: The label of the parent ingredient when the asset already had a manifest.
_PARENT = "parent"


def _manifest(claim: CredentialClaim, title: str | None, *, has_parent: bool) -> dict[str, Any]:
    from ledgerflow import __version__

    assert claim.digital_source_type is not None  # set by the claim's validator
    action: dict[str, Any]
    if has_parent:
        # The asset already carried a manifest (e.g. the model provider's): it becomes the
        # parent ingredient and this manifest "opens" it, as C2PA requires; the parent keeps
        # its own digital source type, ledgerflow's assertion states the origin.
        action = {"action": "c2pa.opened", "parameters": {"ingredientIds": [_PARENT]}}
    else:
        action = {
            "action": "c2pa.created",
            "digitalSourceType": claim.digital_source_type.value,
        }
    if claim.generator is not None:
        action["softwareAgent"] = {"name": claim.generator}
    manifest: dict[str, Any] = {
        "claim_generator_info": [{"name": GENERATOR_NAME, "version": __version__}],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [action]}},
            {"label": ASSERTION_LABEL, "data": claim.model_dump(mode="json")},
        ],
    }
    if title:
        manifest["title"] = bounded(title, 256)
    return manifest


def _reason(exc: BaseException) -> str:
    return bounded(str(exc) or type(exc).__name__, 200)


def embed(
    asset: bytes,
    mime: str,
    claim: CredentialClaim,
    signer: CredentialSigner,
    *,
    title: str | None = None,
) -> bytes:
    """``asset`` with a signed C2PA manifest embedded (a new byte string; ``asset`` is kept).

    Args:
        asset: the file's bytes, as registered (``claim.content_hash`` is their hash).
        mime: its media type, e.g. ``image/png`` (see :func:`supported_media_types`).
        claim: what ledgerflow's assertion says; its digital source type goes into the
            ``c2pa.created`` action.
        signer: the operator's certificate chain and key.
        title: the manifest's ``dc:title`` (e.g. the file name); optional.

    Returns:
        The asset with the manifest store embedded.

    Raises:
        UnsupportedMediaType: the c2pa library cannot embed in this media type.
        CredentialError: the asset is not a valid file of that type, or signing failed.
    """
    media = _media_type(mime, for_embedding=True)
    info = c2pa.C2paSignerInfo(
        _C2PA_ALG[signer.algorithm],
        signer.cert_chain_pem,
        signer._key_pkcs8,
        signer.tsa_url,
    )
    out = io.BytesIO()
    try:
        with _context(None) as ctx:
            has_parent = _has_manifest(asset, media, ctx)
            manifest = _manifest(claim, title, has_parent=has_parent)
            with (
                c2pa.Signer.from_info(info) as c2pa_signer,
                c2pa.Builder(manifest, context=ctx) as builder,
            ):
                if has_parent:
                    parent = {"title": title or "source", "relationship": "parentOf"}
                    parent["label"] = _PARENT
                    builder.add_ingredient(parent, media, io.BytesIO(asset))
                builder.sign(c2pa_signer, media, io.BytesIO(asset), out)
    except c2pa.C2paError as exc:
        raise CredentialError(f"cannot sign a C2PA manifest into {media}: {_reason(exc)}") from None
    return out.getvalue()


def _has_manifest(asset: bytes, media: str, ctx: c2pa.Context) -> bool:
    try:
        with c2pa.Reader(media, io.BytesIO(asset), context=ctx):
            return True
    except c2pa.C2paError.ManifestNotFound:
        return False
    except (c2pa.C2paError.Other, c2pa.C2paError.Io, c2pa.C2paError.NotSupported):
        raise  # not a valid file: signing says so
    except c2pa.C2paError:
        return True  # a manifest that does not validate is still kept as the parent


def read(asset: bytes, mime: str, *, trust_anchors: bytes | str | None = None) -> CredentialReport:
    """Find and validate the C2PA manifest of ``asset``.

    Args:
        asset: the file's bytes.
        mime: its media type.
        trust_anchors: PEM root certificates whose signers count as trusted (see
            :func:`trust_anchors_from_settings`); None: no signer is trusted and an intact
            manifest reads as ``untrusted``.

    Returns:
        The report; a missing, altered or untrusted manifest is a status, not an error.

    Raises:
        UnsupportedMediaType: the c2pa library cannot read this media type.
        CredentialError: the bytes are not a valid file of that type.
        ConfigError: ``trust_anchors`` is not PEM.
    """
    media = _media_type(mime, for_embedding=False)
    anchors = _trust_pem(trust_anchors)
    with _context(anchors) as ctx:
        try:
            reader = c2pa.Reader(media, io.BytesIO(asset), context=ctx)
        except c2pa.C2paError.ManifestNotFound:
            return CredentialReport(status="missing")
        except c2pa.C2paError.RemoteManifest as exc:
            # Only a reference to a manifest elsewhere: not fetched (offline by design).
            entry = ValidationEntry(code="manifest.remote", explanation=_reason(exc))
            return CredentialReport(status="missing", failures=[entry])
        except (c2pa.C2paError.Other, c2pa.C2paError.Io, c2pa.C2paError.NotSupported) as exc:
            raise CredentialError(f"not a readable {media} file: {_reason(exc)}") from None
        except c2pa.C2paError as exc:
            # A manifest store is there but cannot be parsed or checked: it was tampered with.
            entry = ValidationEntry(code="manifest.unreadable", explanation=_reason(exc))
            return CredentialReport(status="altered", failures=[entry])
        with reader:
            state = reader.get_validation_state()
            results = reader.get_validation_results() or {}
            store = json.loads(reader.json())
    manifests = store.get("manifests") if isinstance(store, dict) else None
    manifests = manifests if isinstance(manifests, dict) else {}
    active = manifests.get(store.get("active_manifest")) if manifests else None
    return _report(state, results, active if isinstance(active, dict) else {}, manifests)


def _entries(items: Any) -> list[ValidationEntry]:
    if not isinstance(items, list):
        return []
    return [
        ValidationEntry(code=str(i.get("code", "")), explanation=str(i.get("explanation", "")))
        for i in items
        if isinstance(i, dict)
    ]


def _report(
    state: str | None,
    results: dict[str, Any],
    manifest: dict[str, Any],
    manifests: dict[str, Any],
) -> CredentialReport:
    active = results.get("activeManifest") or {}
    failures = _entries(active.get("failure"))
    success = {e.code for e in _entries(active.get("success"))}
    codes = {f.code for f in failures}
    signature_valid = "claimSignature.validated" in success and not any(
        c.startswith("claimSignature.") for c in codes
    )
    # a hard binding (not only the hashed URIs of the assertions) must have been checked
    content_matches = not any(c in _CONTENT_MISMATCH for c in codes) and any(
        c.removesuffix(".match") + ".mismatch" in _CONTENT_MISMATCH for c in success
    )
    blocking = [f for f in failures if f.code != _UNTRUSTED]
    trusted = state == "Trusted" and not failures
    if state == "Invalid" or blocking or not signature_valid or not content_matches:
        status: CredentialStatus = "altered"
    elif trusted:
        status = "valid"
    else:
        status = "untrusted"

    source: str | None = None
    claim: CredentialClaim | None = None
    claim_error: str | None = None
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict):
            continue
        label, data = str(assertion.get("label", "")), assertion.get("data")
        if label.split(".v", 1)[0] == "c2pa.actions" and isinstance(data, dict) and source is None:
            source = _source_type(data)
        elif label == ASSERTION_LABEL:
            try:
                claim = CredentialClaim.model_validate(data)
            except ValidationError as exc:
                claim_error = f"{ASSERTION_LABEL} does not match the schema: {_first_error(exc)}"
    if source is None:
        source = _parent_source_type(manifest, manifests)
    if claim is None and claim_error is None:
        claim_error = f"the manifest has no {ASSERTION_LABEL} assertion"

    info = manifest.get("signature_info")
    signer = None
    if isinstance(info, dict):
        fields = ("issuer", "common_name", "cert_serial_number", "alg", "time")
        signer = SignerIdentity(**{k: str(info[k]) for k in fields if info.get(k) is not None})
    generators = manifest.get("claim_generator_info")
    generator = None
    if isinstance(generators, list) and generators and isinstance(generators[0], dict):
        name, version = generators[0].get("name"), generators[0].get("version")
        generator = f"{name}/{version}" if version else str(name) if name else None

    return CredentialReport(
        status=status,
        validation_state=state,
        signature_valid=signature_valid,
        content_matches=content_matches,
        trusted=trusted,
        manifest_label=manifest.get("label") if isinstance(manifest.get("label"), str) else None,
        claim_generator=generator,
        digital_source_type=source,
        ai_generated=None if source is None else source in AI_SOURCE_TYPES,
        claim=claim,
        claim_error=claim_error,
        signer=signer,
        failures=failures,
    )


def _source_type(actions: dict[str, Any]) -> str | None:
    """The digital source type of the ``c2pa.created`` action (else of the first that has one)."""
    found = [a for a in actions.get("actions") or [] if isinstance(a, dict)]
    for action in sorted(found, key=lambda a: a.get("action") != "c2pa.created"):
        value = action.get("digitalSourceType")
        if isinstance(value, str) and value:
            return value
    return None


def _parent_source_type(manifest: dict[str, Any], manifests: dict[str, Any]) -> str | None:
    """The digital source type of the nearest parent ingredient's manifest that states one
    (a manifest that opened an earlier one, e.g. the model provider's, has none of its own)."""
    seen: set[str] = set()
    current = manifest
    for _ in range(16):
        parents = [
            i
            for i in current.get("ingredients") or []
            if isinstance(i, dict) and i.get("relationship") == "parentOf"
        ]
        label = parents[0].get("active_manifest") if parents else None
        if not isinstance(label, str) or label in seen or label not in manifests:
            return None
        seen.add(label)
        current = manifests[label]
        for assertion in current.get("assertions") or []:
            if (
                isinstance(assertion, dict)
                and str(assertion.get("label", "")).split(".v", 1)[0] == "c2pa.actions"
                and isinstance(assertion.get("data"), dict)
                and (found := _source_type(assertion["data"])) is not None
            ):
                return found
    return None
