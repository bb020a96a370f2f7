"""The stack's token keys: one Ed25519 key signs, every key not yet retired verifies.

Files under `<state>/keys`: the signing key (`jwt_ed25519.pem`, the stack's alone), the
ring (`keyring.json`: each key's public JWK, when it was made and when it stopped signing)
and, in `public/`, the JWKS document every service verifies with and the api publishes
at `/.well-known/jwks.json`. Services read the document again when it changes, so a
rotation needs no restart (runtime/auth.py `KeySet`).

`rotate` publishes the new key before it signs anything, then signs with it; the old one
keeps verifying. `retire` removes a key from the document, and refuses while a token it
signed could still be valid: until it stopped signing plus the longest lifetime a service
accepts, plus the leeway."""

import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from infra.config import StackConfig
from infra.procs import StackError, write_private
from runtime.jwks import kid_of, public_jwk
from runtime.settings import HttpServiceSettings


@dataclass
class RingKey:
    """One key of the ring: its public JWK, when it was made and when it stopped signing."""

    jwk: dict[str, str]
    created_at: float
    signed_until: float | None = None  # None: it signs now

    @property
    def kid(self) -> str:
        return self.jwk["kid"]


def ring_path(config: StackConfig) -> Path:
    return config.jwt_private_key.parent / "keyring.json"


def longest_valid_s() -> float:
    """How long after signing a token may still be accepted: the lifetime a service
    accepts at most, and the clock skew it forgives."""
    fields = HttpServiceSettings.model_fields
    return float(fields["token_max_lifetime_s"].default + fields["token_leeway_s"].default)


def _read_ring(config: StackConfig) -> list[RingKey]:
    return [RingKey(**entry) for entry in orjson.loads(ring_path(config).read_bytes())["keys"]]


def _write_atomically(path: Path, data: bytes) -> None:
    # Aside, then renamed over: a service reading it sees the old file or the new one.
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_bytes(data)
    aside.chmod(0o644)
    os.replace(aside, path)


def _publish(config: StackConfig, ring: list[RingKey]) -> None:
    """The ring, then the JWKS document of its keys (what services verify with)."""
    _write_atomically(ring_path(config), orjson.dumps({"keys": [asdict(k) for k in ring]}))
    _write_atomically(config.jwt_public_key, orjson.dumps({"keys": [k.jwk for k in ring]}))


def _signing_public(config: StackConfig) -> Ed25519PublicKey:
    key = serialization.load_pem_private_key(config.jwt_private_key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise StackError(f"{config.jwt_private_key} is not an Ed25519 private key")
    return key.public_key()


def _write_signing(config: StackConfig, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    aside = config.jwt_private_key.with_name(f".{config.jwt_private_key.name}.tmp")
    write_private(aside, pem.decode())
    os.replace(aside, config.jwt_private_key)


def ensure(config: StackConfig, now: float | None = None) -> str:
    """The ring and its document exist (a first key made, or the signing key of a stack
    from before key ids adopted); returns the signing key's id."""
    now = time.time() if now is None else now
    if not config.jwt_private_key.exists():
        _write_signing(config, Ed25519PrivateKey.generate())
    signing = _signing_public(config)
    ring = _read_ring(config) if ring_path(config).exists() else []
    if kid_of(signing) not in {k.kid for k in ring}:
        ring.append(RingKey(public_jwk(signing), now))
    _publish(config, ring)
    return kid_of(signing)


def rotate(config: StackConfig, now: float | None = None) -> str:
    """A new signing key; the old one verifies on until retired. Returns the new key's id."""
    now = time.time() if now is None else now
    ensure(config, now)
    old = kid_of(_signing_public(config))
    new = Ed25519PrivateKey.generate()
    ring = _read_ring(config)
    for key in ring:
        if key.kid == old:
            key.signed_until = now
    ring.append(RingKey(public_jwk(new.public_key()), now))
    _publish(config, ring)  # verifiers know the new key before any token carries it
    _write_signing(config, new)
    return kid_of(new.public_key())


def retire(config: StackConfig, kid: str, now: float | None = None) -> None:
    """Removes `kid` from the keys services verify with, once nothing it signed is valid."""
    now = time.time() if now is None else now
    ring = _read_ring(config)
    key = next((k for k in ring if k.kid == kid), None)
    if key is None:
        raise StackError(f"no key {kid!r} (telemetry keys list)")
    if key.signed_until is None:
        raise StackError(f"key {kid} signs tokens now: rotate first (telemetry keys rotate)")
    until = key.signed_until + longest_valid_s()
    if now < until:
        when = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
        raise StackError(f"tokens signed by {kid} may be valid until {when}: retire it after that")
    _publish(config, [k for k in ring if k.kid != kid])


def listing(config: StackConfig) -> list[dict[str, object]]:
    """Each key: its id, when it was made, whether it signs, and from when it may retire."""
    rows: list[dict[str, object]] = []
    for key in _read_ring(config):
        rows.append(
            {
                "kid": key.kid,
                "created_at": key.created_at,
                "signs": key.signed_until is None,
                "signed_until": key.signed_until,
                "retirable_from": None
                if key.signed_until is None
                else key.signed_until + longest_valid_s(),
            }
        )
    return rows
