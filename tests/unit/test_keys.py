"""The token keys: ids (RFC 7638), the stack's ring (infra/keys.py: rotate, retire), and
verifiers that follow the published document without a restart (runtime/auth.py)."""

import base64
import os
import time
from pathlib import Path

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from infra import keys
from infra.config import StackConfig
from infra.procs import StackError
from runtime.auth import AuthError, TokenVerifier, generate_keypair, issue_token
from runtime.clock import ManualClock
from runtime.jwks import VerifyingKey, document, kid_of, read_keys
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Role
from tests.support.forged_tokens import hs256_with_public_key

DAY = 24 * 3600.0
# Now: PyJWT checks `iat` against the machine's clock, whatever the verifier's.
T0 = float(int(time.time()))


@pytest.fixture
def config(tmp_path: Path) -> StackConfig:
    return StackConfig(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")


def verifier(config: StackConfig, clock: ManualClock) -> TokenVerifier:
    return TokenVerifier.from_file(
        config.jwt_public_key, audience=JWT_AUDIENCE, issuer=JWT_ISSUER, clock=clock
    )


def token(config: StackConfig, sub: str, clock: ManualClock) -> str:
    return issue_token(config.jwt_private_key, sub=sub, role=Role.DRIVER, clock=clock)


def test_a_key_id_is_its_rfc_7638_thumbprint() -> None:
    # RFC 8037, appendix A.3: the Ed25519 key of A.2 and its thumbprint.
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "="))
    assert kid_of(key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    published = document({kid_of(key): VerifyingKey(key, "EdDSA")})
    assert read_keys(orjson.dumps(published)).keys() == {kid_of(key)}


def test_the_ring_is_made_once_and_every_token_names_its_key(config: StackConfig) -> None:
    clock = ManualClock(T0)
    kid = keys.ensure(config, T0)
    assert keys.ensure(config, T0 + 5) == kid  # again: the same key, one entry
    assert [row["kid"] for row in keys.listing(config)] == [kid]
    published = orjson.loads(config.jwt_public_key.read_bytes())
    assert [k["kid"] for k in published["keys"]] == [kid]
    assert set(published["keys"][0]) == {"kty", "crv", "x", "kid", "use", "alg"}  # public only
    signed = token(config, "d1", clock)
    assert jwt.get_unverified_header(signed)["kid"] == kid
    assert verifier(config, clock).verify(signed).sub == "d1"


def test_a_rotation_is_followed_without_a_restart_and_old_tokens_still_verify(
    config: StackConfig,
) -> None:
    clock = ManualClock(T0)
    old_kid = keys.ensure(config, T0)
    running = verifier(config, clock)  # a service, started before the rotation
    old_token = token(config, "before", clock)
    assert running.verify(old_token).sub == "before"
    new_kid = keys.rotate(config, T0 + 60)
    assert new_kid != old_kid
    new_token = token(config, "after", clock)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    # At once (no wait for its next look at the file): a kid it does not hold sends it there.
    assert running.verify(new_token).sub == "after"
    running.keys.current()  # and on its next looks
    assert running.verify(old_token).sub == "before"
    rows = {row["kid"]: row for row in keys.listing(config)}
    assert rows[new_kid]["signs"] and not rows[old_kid]["signs"]
    assert rows[old_kid]["retirable_from"] == T0 + 60 + keys.longest_valid_s()


def test_retire_refuses_while_tokens_of_the_key_could_be_valid(config: StackConfig) -> None:
    clock = ManualClock(T0)
    first = keys.ensure(config, T0)
    with pytest.raises(StackError, match="signs tokens now"):
        keys.retire(config, first, T0 + 10 * DAY)
    keys.rotate(config, T0 + 100)
    old_token = token(config, "x", clock)  # signed by the new key: unaffected by the retire
    with pytest.raises(StackError, match="may be valid until"):
        keys.retire(config, first, T0 + 100 + DAY)  # a day: within lifetime + leeway
    with pytest.raises(StackError, match="no key"):
        keys.retire(config, "not-a-kid", T0 + 100 + 2 * DAY)
    keys.retire(config, first, T0 + 100 + keys.longest_valid_s())
    assert first not in {k["kid"] for k in orjson.loads(config.jwt_public_key.read_bytes())["keys"]}
    assert verifier(config, clock).verify(old_token).sub == "x"


def test_a_retired_or_unknown_key_id_is_refused(config: StackConfig) -> None:
    clock = ManualClock(T0)
    first = keys.ensure(config, T0)
    stale = token(config, "old", clock)
    keys.rotate(config, T0 + 1)
    keys.retire(config, first, T0 + 1 + keys.longest_valid_s())
    with pytest.raises(AuthError, match="unknown key id"):
        verifier(config, clock).verify(stale)


def test_a_token_without_kid_verifies_against_the_keys_held(config: StackConfig) -> None:
    # Tokens signed before key ids existed carry none: the key whose signature holds.
    clock = ManualClock(T0)
    keys.ensure(config, T0)
    keys.rotate(config, T0 + 1)
    claims = jwt.decode(token(config, "legacy", clock), options={"verify_signature": False})
    private = serialization.load_pem_private_key(config.jwt_private_key.read_bytes(), None)
    bare = jwt.encode(claims, private, algorithm="EdDSA")  # type: ignore[arg-type]
    assert "kid" not in jwt.get_unverified_header(bare)
    assert verifier(config, clock).verify(bare).sub == "legacy"


def test_a_document_that_cannot_be_read_keeps_the_keys_read_before(
    config: StackConfig, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    keys.ensure(config, T0)
    running = verifier(config, clock)
    signed = token(config, "d", clock)
    config.jwt_public_key.write_text("{not json")
    os.utime(config.jwt_public_key, (T0 + 9, T0 + 9))
    clock.advance(5)  # past its next look at the file
    assert running.keys.current()  # the old keys stay
    assert running.verify(signed).sub == "d"
    assert "could not be read, the previous ones stay" in caplog.text


def test_a_stack_from_before_key_ids_keeps_its_key(config: StackConfig) -> None:
    config.jwt_private_key.parent.mkdir(parents=True)
    generate_keypair(config.jwt_private_key, config.jwt_private_key.with_suffix(".pub"))
    clock = ManualClock(T0)
    before = token(config, "kept", clock)
    keys.ensure(config, T0)
    assert verifier(config, clock).verify(before).sub == "kept"


def test_an_identity_providers_rsa_and_ec_keys_verify_their_tokens_and_nothing_else(
    tmp_path: Path,
) -> None:
    # An identity provider signs RS256 or ES256 with kids of its own: its JWKS document
    # as the services' key file is all it takes.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    entries = [
        orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())) | {"kid": "idp-rsa"},
        orjson.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())) | {"kid": "idp-ec"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "idp-hmac"},  # a secret: never a verifying key
    ]
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": entries}))
    # PyJWT checks `exp` against the wall clock: tokens made now, not at import (the
    # suite reaches this test more than their 600 s after it starts).
    now = float(int(time.time()))
    clock = ManualClock(now)
    verifier = TokenVerifier.from_file(path, audience=JWT_AUDIENCE, issuer=JWT_ISSUER, clock=clock)
    assert set(verifier.keys.current()) == {"idp-rsa", "idp-ec"}
    claims = {"sub": "u1", "role": "customer", "iat": int(now), "exp": int(now) + 600,
              "aud": JWT_AUDIENCE, "iss": JWT_ISSUER}  # fmt: skip
    for key, alg, kid in ((rsa_key, "RS256", "idp-rsa"), (ec_key, "ES256", "idp-ec")):
        signed = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
        assert verifier.verify(signed).sub == "u1"
    # The algorithm is the key's: an RS256 key's kid on an HS256 token, signed with the
    # public key as the secret, is refused; so is the HMAC entry's kid.
    public_pem = tmp_path / "idp.pub.pem"
    public_pem.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(AuthError):
        verifier.verify(hs256_with_public_key(public_pem, kid="idp-rsa"))
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    with pytest.raises(AuthError, match="unknown key id"):
        verifier.verify(hs256_with_public_key(secret, kid="idp-hmac"))
    republished = {k["kid"]: k["alg"] for k in document(verifier.keys.current())["keys"]}
    assert republished == {"idp-rsa": "RS256", "idp-ec": "ES256"}
