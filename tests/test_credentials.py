"""C2PA content credentials (ledgerflow.provenance.credentials) with the real c2pa-rs library.

A test CA and end-entity signing certificates are made here with `cryptography`; the assets
(a PNG, a JPEG, a WAV) are written byte by byte. No Temporal, no chain.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from pathlib import Path
from typing import Any

import c2pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from ledgerflow.errors import ConfigError, CredentialError, UnsupportedMediaType
from ledgerflow.provenance.credentials import (
    ASSERTION_LABEL,
    CredentialAnchor,
    CredentialClaim,
    CredentialSigner,
    DigitalSourceType,
    embed,
    read,
    supported_media_types,
    trust_anchors_from_settings,
)
from ledgerflow.settings import Settings

AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
HUMAN = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCreation"
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")

# ---- a test PKI -------------------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ledgerflow tests"),
        ]
    )


def make_ca(
    cn: str = "ledgerflow test root",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: Any,
    *,
    ekus: list[x509.ObjectIdentifier] | None = None,
    digital_signature: bool = True,
    is_ca: bool = False,
    days: int = 30,
) -> x509.Certificate:
    """An end-entity certificate the way C2PA wants it: KU digitalSignature (critical), an EKU
    (emailProtection by default), not a CA, with key identifiers, issued by ``ca``."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("ledgerflow test signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=not digital_signature,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if ekus is None:
        ekus = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


class PKI:
    def __init__(self) -> None:
        self.ca, self.ca_key = make_ca()
        self.other_ca, _ = make_ca("someone else's root")
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = make_leaf(self.ca, self.ca_key, self.key)
        self.chain_pem = _pem(self.leaf) + _pem(self.ca)
        self.key_pem = _key_pem(self.key)
        self.ca_pem = _pem(self.ca)
        self.other_ca_pem = _pem(self.other_ca)

    def signer(self, **kw: Any) -> CredentialSigner:
        return CredentialSigner(cert_chain_pem=self.chain_pem, private_key_pem=self.key_pem, **kw)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI()


# ---- assets -----------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _idat(shade: int, width: int = 16, height: int = 16) -> bytes:
    rows = b"".join(
        b"\x00" + bytes((x * 7 + y * 13 + shade) % 256 for x in range(width * 3))
        for y in range(height)
    )
    # stored (level 0) deflate: another shade gives an IDAT of exactly the same length
    return _chunk(b"IDAT", zlib.compress(rows, 0))


def make_png(shade: int = 0, width: int = 16, height: int = 16) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _idat(shade, width, height)
        + _chunk(b"IEND", b"")
    )


def repaint(png: bytes, shade: int) -> bytes:
    """``png`` with other pixels in its IDAT chunk (same length, valid CRC): a changed image."""
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    new = _idat(shade)
    assert len(new) == length + 12
    return png[:start] + new + png[start + length + 12 :]


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def make_jpeg(scan: bytes = b"\x00\x12\x34\x00") -> bytes:
    """A baseline JPEG's segment structure (8x8 grey; C2PA parses segments, never decodes)."""
    huffman = bytes([0, 1] + [0] * 14) + b"\x00"
    return (
        b"\xff\xd8"
        + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + _segment(0xDB, b"\x00" + bytes([1] * 64))
        + _segment(0xC0, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00")
        + _segment(0xC4, b"\x00" + huffman)
        + _segment(0xC4, b"\x10" + huffman)
        + _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
        + scan
        + b"\xff\xd9"
    )


def make_wav(samples: int = 800) -> bytes:
    data = bytes((i * 5) % 256 for i in range(samples))
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 8)  # PCM, mono, 8 kHz, 8-bit
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def make_claim(**over: Any) -> CredentialClaim:
    fields: dict[str, Any] = {
        "claim_hash": "0x" + "ab" * 32,
        "content_hash": "0x" + "cd" * 32,
        "workflow_id": "content-42",
        "run_id": "0190c1d2-7a4b-7c3e-9f00-123456789abc",
        "step_seq": 3,
        "origin": "synthetic",
        "generator": "openai/gpt-image-1",
        "author_did": "did:pkh:eip155:31337:0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "anchor": CredentialAnchor(
            registry="0x5FbDB2315678afecb367f032d93F642f64180aa3",
            chain_id=31337,
            tx_hash="0x" + "12" * 32,
            block_number=7,
            root="0x" + "34" * 32,
        ),
    }
    fields.update(over)
    return CredentialClaim(**fields)


# ---- round trips ------------------------------------------------------------------------------


def test_png_round_trip_is_valid_with_the_claim(pki: PKI) -> None:
    original = make_png()
    claim = make_claim()
    signed = embed(original, "image/png", claim, pki.signer(), title="chart.png")
    assert signed != original and signed.startswith(b"\x89PNG\r\n\x1a\n")
    assert original == make_png()  # the input is not touched

    report = read(signed, "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "valid", report.failures
    assert report.validation_state == "Trusted"
    assert report.signature_valid and report.content_matches and report.trusted
    assert report.failures == []
    assert report.claim == claim
    assert report.claim_error is None
    assert report.digital_source_type == AI and report.ai_generated is True
    assert report.signer is not None and report.signer.common_name == "ledgerflow test signer"
    assert report.signer.issuer == "ledgerflow tests"
    assert report.claim_generator is not None and report.claim_generator.startswith("ledgerflow/")
    assert report.manifest_label and report.manifest_label.startswith("urn:c2pa:")


def test_the_manifest_says_what_c2pa_readers_look_for(pki: PKI) -> None:
    # Read with the library itself, not through ledgerflow: the IPTC type sits on c2pa.created.
    signed = embed(make_png(), "image/png", make_claim(), pki.signer())
    import io

    with c2pa.Reader("image/png", io.BytesIO(signed)) as reader:
        manifest = reader.get_active_manifest()
    assert manifest is not None
    by_label = {a["label"]: a["data"] for a in manifest["assertions"]}
    actions = next(v for k, v in by_label.items() if k.startswith("c2pa.actions"))["actions"]
    created = [a for a in actions if a["action"] == "c2pa.created"]
    assert len(created) == 1 and created[0]["digitalSourceType"] == AI
    assert created[0]["softwareAgent"]["name"] == "openai/gpt-image-1"
    ours = by_label[ASSERTION_LABEL]
    assert ours["claim_hash"] == "0x" + "ab" * 32
    assert ours["anchor"]["chain_id"] == 31337 and ours["step_seq"] == 3


def test_human_made_content_is_not_marked_as_ai(pki: PKI) -> None:
    claim = make_claim(origin="human", generator=None)
    assert claim.digital_source_type is DigitalSourceType.DIGITAL_CREATION
    report = read(
        embed(make_png(), "image/png", claim, pki.signer()), "image/png", trust_anchors=pki.ca_pem
    )
    assert report.status == "valid"
    assert report.digital_source_type == HUMAN and report.ai_generated is False
    capture = make_claim(origin="human", digital_source_type=DigitalSourceType.DIGITAL_CAPTURE)
    report = read(embed(make_png(), "image/png", capture, pki.signer()), "image/png")
    assert report.digital_source_type == DigitalSourceType.DIGITAL_CAPTURE.value


def test_jpeg_round_trip_and_alteration(pki: PKI) -> None:
    original = make_jpeg()
    signed = embed(original, "image/jpeg", make_claim(), pki.signer())
    assert signed.startswith(b"\xff\xd8") and b"c2pa" in signed
    report = read(signed, "image/jpg", trust_anchors=pki.ca_pem)  # the common misspelling
    assert report.status == "valid" and report.claim == make_claim()
    assert signed.count(b"\x00\x12\x34\x00") == 1
    altered = signed.replace(b"\x00\x12\x34\x00", b"\x00\x12\x34\x01")
    report = read(altered, "image/jpeg", trust_anchors=pki.ca_pem)
    assert report.status == "altered" and not report.content_matches
    assert read(original, "image/jpeg").status == "missing"


def test_another_format_and_ps256(pki: PKI) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = make_leaf(pki.ca, pki.ca_key, rsa_key, ekus=[DOCUMENT_SIGNING])
    signer = CredentialSigner(
        cert_chain_pem=_pem(leaf) + pki.ca_pem,
        private_key_pem=_key_pem(rsa_key),
        algorithm="PS256",
    )
    assert "audio/wav" in supported_media_types()
    signed = embed(make_wav(), "audio/wav", make_claim(), signer)
    report = read(signed, "audio/wav", trust_anchors=pki.ca_pem)
    assert report.status == "valid", report.failures
    assert report.signer is not None and (report.signer.alg or "").upper() == "PS256"
    assert report.claim == make_claim()


# ---- what a reader must tell apart -----------------------------------------------------------


def test_changed_pixels_are_reported_altered(pki: PKI) -> None:
    signed = embed(make_png(), "image/png", make_claim(), pki.signer())
    altered = repaint(signed, shade=1)
    assert altered != signed and len(altered) == len(signed)
    report = read(altered, "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "altered"
    assert not report.content_matches and not report.trusted
    assert "assertion.dataHash.mismatch" in {f.code for f in report.failures}
    assert report.signature_valid  # the manifest itself is intact: only the pixels changed
    assert report.claim == make_claim()  # still readable, but not to be relied upon


def test_an_edited_assertion_breaks_the_manifest(pki: PKI) -> None:
    signed = embed(make_png(), "image/png", make_claim(), pki.signer())
    # Change the workflow id inside the signed manifest (same length): the claim no longer
    # matches its signature and hashed URIs.
    assert signed.count(b"content-42") == 1
    forged = signed.replace(b"content-42", b"content-43")
    report = read(forged, "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "altered"
    assert "assertion.hashedURI.mismatch" in {f.code for f in report.failures}
    assert report.claim is not None and report.claim.workflow_id == "content-43"


def test_a_broken_signature_is_reported(pki: PKI) -> None:
    signed = embed(make_png(), "image/png", make_claim(), pki.signer())
    # The manifest store is the caBX chunk; its last box is the claim signature (COSE).
    start = signed.index(b"caBX") - 4
    (length,) = struct.unpack(">I", signed[start : start + 4])
    end = start + 8 + length
    forged = bytearray(signed)
    forged[end - 10] ^= 0xFF
    forged[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(forged[start + 4 : end])))
    report = read(bytes(forged), "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "altered"
    assert not report.signature_valid and not report.trusted
    assert "claimSignature.mismatch" in {f.code for f in report.failures}


def test_a_stripped_asset_has_no_manifest(pki: PKI) -> None:
    report = read(make_png(), "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "missing"
    assert report.claim is None and not report.signature_valid and report.failures == []


def test_signer_of_an_unconfigured_or_other_ca_is_untrusted(pki: PKI) -> None:
    signed = embed(make_png(), "image/png", make_claim(), pki.signer())
    for anchors in (None, pki.other_ca_pem):
        report = read(signed, "image/png", trust_anchors=anchors)
        assert report.status == "untrusted"
        assert report.signature_valid and report.content_matches and not report.trusted
        assert {f.code for f in report.failures} == {"signingCredential.untrusted"}
        assert report.claim == make_claim()
    both = pki.other_ca_pem + pki.ca_pem
    assert read(signed, "image/png", trust_anchors=both).status == "valid"


def test_a_manifest_without_our_assertion(pki: PKI) -> None:
    report = read(_foreign_png(pki), "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "valid"
    assert report.claim is None and report.claim_error and ASSERTION_LABEL in report.claim_error
    assert report.ai_generated is True and report.claim_generator == "someone-else/1"


def _foreign_png(pki: PKI, source: str = AI) -> bytes:
    """A PNG with a manifest made by another tool (say, the model provider's)."""
    import io

    manifest = {
        "claim_generator_info": [{"name": "someone-else", "version": "1"}],
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": source}]},
            }
        ],
    }
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, pki.chain_pem, pki.key_pem, None)
    out = io.BytesIO()
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest) as builder:
        builder.sign(signer, "image/png", io.BytesIO(make_png()), out)
    return out.getvalue()


def test_an_existing_manifest_becomes_the_parent_ingredient(pki: PKI) -> None:
    import io
    import json

    provider = _foreign_png(pki)
    signed = embed(provider, "image/png", make_claim(), pki.signer(), title="gen.png")
    report = read(signed, "image/png", trust_anchors=pki.ca_pem)
    assert report.status == "valid", report.failures
    assert report.claim == make_claim() and report.claim_generator.startswith("ledgerflow/")
    # the provider's marking is kept (the parent's c2pa.created) and still read as AI-made
    assert report.digital_source_type == AI and report.ai_generated is True
    with c2pa.Reader("image/png", io.BytesIO(signed)) as reader:
        store = json.loads(reader.json())
    active = store["manifests"][store["active_manifest"]]
    assert [i["relationship"] for i in active["ingredients"]] == ["parentOf"]
    parent = store["manifests"][active["ingredients"][0]["active_manifest"]]
    assert parent["claim_generator_info"][0]["name"] == "someone-else"
    actions = next(a for a in active["assertions"] if a["label"].startswith("c2pa.actions"))
    assert [a["action"] for a in actions["data"]["actions"]] == ["c2pa.opened"]


# ---- typed errors -----------------------------------------------------------------------------


def test_unsupported_media_types_and_broken_assets(pki: PKI) -> None:
    with pytest.raises(UnsupportedMediaType) as err:
        embed(b"hello", "text/plain", make_claim(), pki.signer())
    assert err.value.mime == "text/plain" and isinstance(err.value, ValueError)
    with pytest.raises(UnsupportedMediaType):
        read(b"hello", "application/x-nothing-known")
    with pytest.raises(UnsupportedMediaType):
        read(b"hello", "")
    with pytest.raises(CredentialError):
        read(b"not a png at all", "image/png")
    with pytest.raises(CredentialError):
        embed(b"not a png at all", "image/png", make_claim(), pki.signer())
    # parameters and case are ignored
    signed = embed(make_png(), "IMAGE/PNG; foo=bar", make_claim(), pki.signer())
    assert read(signed, "image/png").status == "untrusted"
    with pytest.raises(ConfigError):
        read(signed, "image/png", trust_anchors=b"not pem")


def test_claim_is_validated() -> None:
    with pytest.raises(ValidationError):
        make_claim(origin="synthetic", digital_source_type=DigitalSourceType.DIGITAL_CAPTURE)
    with pytest.raises(ValidationError):
        make_claim(origin="human", digital_source_type=DigitalSourceType.TRAINED_ALGORITHMIC_MEDIA)
    with pytest.raises(ValidationError):
        make_claim(claim_hash="0x1234")
    with pytest.raises(ValidationError):
        make_claim(workflow_id="bad\nid")
    with pytest.raises(ValidationError):
        CredentialClaim.model_validate({**make_claim().model_dump(mode="json"), "extra": 1})
    assert CredentialClaim.model_validate_json(make_claim().model_dump_json()) == make_claim()


def test_signing_credentials_are_checked(pki: PKI) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    cases: dict[str, tuple[bytes, bytes, str]] = {
        "belong": (pki.chain_pem, _key_pem(other_key), "ES256"),
        "secp384r1": (pki.chain_pem, pki.key_pem, "ES384"),
        "RSA": (pki.chain_pem, pki.key_pem, "PS256"),
        "self-signed": (pki.ca_pem, _key_pem(pki.ca_key), "ES256"),
        "digitalSignature": (
            _pem(make_leaf(pki.ca, pki.ca_key, pki.key, digital_signature=False)),
            pki.key_pem,
            "ES256",
        ),
        "Extended Key Usage": (
            _pem(make_leaf(pki.ca, pki.ca_key, pki.key, ekus=[])),
            pki.key_pem,
            "ES256",
        ),
        "emailProtection or documentSigning": (
            _pem(make_leaf(pki.ca, pki.ca_key, pki.key, ekus=[ExtendedKeyUsageOID.CODE_SIGNING])),
            pki.key_pem,
            "ES256",
        ),
        "anyExtendedKeyUsage": (
            _pem(
                make_leaf(
                    pki.ca, pki.ca_key, pki.key, ekus=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]
                )
            ),
            pki.key_pem,
            "ES256",
        ),
        "CA certificate": (
            _pem(make_leaf(pki.ca, pki.ca_key, pki.key, is_ca=True)),
            pki.key_pem,
            "ES256",
        ),
        "not PEM certificates": (b"junk", pki.key_pem, "ES256"),
        "unencrypted PEM private key": (pki.chain_pem, b"junk-key-material", "ES256"),
    }
    for needle, (chain, key, alg) in cases.items():
        with pytest.raises(ConfigError) as err:
            CredentialSigner(cert_chain_pem=chain, private_key_pem=key, algorithm=alg)  # type: ignore[arg-type]
        assert needle in str(err.value), (needle, str(err.value))
        assert "junk-key-material" not in str(err.value)
    signer = pki.signer()
    assert pki.key_pem.decode() not in repr(signer) and "PRIVATE KEY" not in repr(signer)


def test_signer_and_trust_from_settings(pki: PKI, tmp_path: Path) -> None:
    chain, key, roots = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "roots.pem"
    chain.write_bytes(pki.chain_pem)
    key.write_bytes(pki.key_pem)
    roots.write_bytes(pki.ca_pem)
    settings = Settings(c2pa_cert_chain=chain, c2pa_private_key=key, c2pa_trust_anchors=roots)
    signer = CredentialSigner.from_settings(settings)
    assert signer.algorithm == "ES256" and signer.tsa_url is None
    anchors = trust_anchors_from_settings(settings)
    signed = embed(make_png(), "image/png", make_claim(), signer)
    assert read(signed, "image/png", trust_anchors=anchors).status == "valid"

    with pytest.raises(ConfigError, match="LEDGERFLOW_C2PA_CERT_CHAIN"):
        CredentialSigner.from_settings(Settings())
    assert trust_anchors_from_settings(Settings()) is None
    with pytest.raises(ConfigError, match="cannot read"):
        CredentialSigner.from_files(tmp_path / "missing.pem", key)
    # a key pasted where its path belongs is not quoted back
    pasted = pki.key_pem.decode()
    with pytest.raises(ConfigError) as err:
        CredentialSigner.from_files(chain, pasted)
    body = pasted.splitlines()[1]
    assert body[:16] not in str(err.value) and "private key file" in str(err.value)
    with pytest.raises(ConfigError, match="tsa_url"):
        CredentialSigner.from_files(chain, key, tsa_url="ftp://nowhere")


def test_a_traditional_pem_key_is_accepted(pki: PKI) -> None:
    # `openssl ecparam -genkey` writes "BEGIN EC PRIVATE KEY"; c2pa-rs itself takes PKCS#8 only.
    sec1 = pki.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    signer = CredentialSigner(cert_chain_pem=pki.chain_pem, private_key_pem=sec1)
    signed = embed(make_png(), "image/png", make_claim(), signer)
    assert read(signed, "image/png", trust_anchors=pki.ca_pem).status == "valid"


def test_removing_the_manifest_gives_back_the_original_png(pki: PKI) -> None:
    original = make_png(shade=9)
    signed = embed(original, "image/png", make_claim(), pki.signer())
    start = signed.index(b"caBX") - 4
    (length,) = struct.unpack(">I", signed[start : start + 4])
    stripped = signed[:start] + signed[start + 12 + length :]
    assert stripped == original
    assert read(stripped, "image/png").status == "missing"
