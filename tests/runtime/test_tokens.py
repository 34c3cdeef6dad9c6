"""JWT bearer tokens: HS256 from a secret, RS256 and ES256 from a JWKS file or URL, claims
checks, tampering, and the claims' mapping onto the identity (seeds 002 and 004)."""

from __future__ import annotations

import base64
import json
import time

import pytest
from auth_kit import (
    SECRET,
    add_who,
    bearer,
    claims,
    ec_key,
    hs256,
    jwks,
    jwks_server,
    rsa_key,
    sign,
)
from courtyard.dispatcher import Dispatcher
from courtyard.settings import Settings
from courtyard_sdk import SettingsError
from joserfc import jwt
from joserfc.jwk import OctKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


async def who(rt, token: str):
    return await rt.client.get("/who/me", headers=bearer(token))


def error(answer) -> str:
    return answer.json()["error"]["code"]


async def test_hs256_claims_map_onto_the_identity(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(entry_points=False, jwt_secret=SECRET)
    token = hs256(
        claims(
            sub=None,
            user_id="u-42",
            tenant_id="acme",
            roles=["editor"],
            permissions=["notes:admin"],
        )
    )
    me = (await who(rt, token)).json()
    assert me["subject"] == "u-42" and me["kind"] == "token" and me["tenant"] == "acme"
    assert me["roles"] == ["editor"]
    assert {"*:read", "*:write", "notes:admin"} <= set(me["permissions"])
    assert me["claims"]["user_id"] == "u-42"
    note = await rt.client.post("/who/notes", headers=bearer(token))
    assert note.json() == {"tenant": "acme", "by": "u-42"}
    assert (await rt.client.get("/who/secret", headers=bearer(token))).status_code == 200
    # An editor reloads plugins, but does not install them.
    assert (await rt.client.post("/api/plugins/reload", headers=bearer(token))).status_code == 200
    upload = await rt.client.post("/api/plugins/upload", headers=bearer(token))
    assert upload.status_code == 403


async def test_sub_wins_over_user_id_and_strings_are_split(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(entry_points=False, jwt_secret=SECRET)
    token = hs256(claims(sub="s-1", user_id="u-1", roles="viewer", permissions="a:b c:d"))
    me = (await who(rt, token)).json()
    assert me["subject"] == "s-1" and me["tenant"] is None
    assert {"*:read", "a:b", "c:d"} == set(me["permissions"])
    refused = await rt.client.post("/who/notes", headers=bearer(token))
    assert refused.status_code == 403 and error(refused) == "AUTHORIZATION_FAILED"


async def test_a_token_issuer_turns_auth_on(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(entry_points=False, jwt_secret=SECRET)
    anonymous = await rt.client.post("/api/plugins/reload")
    assert anonymous.status_code == 401 and error(anonymous) == "AUTHENTICATION_REQUIRED"
    assert (await rt.client.get("/who/me")).json()["kind"] == "anonymous"
    no_tenant = await rt.client.post("/who/notes", headers=bearer(hs256(claims(roles=["admin"]))))
    assert no_tenant.status_code == 403 and error(no_tenant) == "TENANT_REQUIRED"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"exp": int(time.time()) - 120}, "TOKEN_EXPIRED"),
        ({"exp": None}, "INVALID_TOKEN"),  # exp is required
        ({"nbf": int(time.time()) + 600}, "INVALID_TOKEN"),
        ({"iat": int(time.time()) + 600}, "INVALID_TOKEN"),
        ({"sub": None}, "INVALID_TOKEN"),  # nobody
        ({"roles": [1, 2]}, "INVALID_TOKEN"),
        ({"tenant_id": {"a": 1}}, "INVALID_TOKEN"),
        ({"iss": "https://other.test"}, "INVALID_TOKEN"),
        ({"iss": None}, "INVALID_TOKEN"),
        ({"aud": "someone-else"}, "INVALID_TOKEN"),
        ({"aud": None}, "INVALID_TOKEN"),
    ],
)
async def test_bad_claims_are_refused(courtyard, changes, code):
    rt = await courtyard(
        entry_points=False,
        jwt_secret=SECRET,
        jwt_issuer="https://issuer.test",
        jwt_audience="courtyard",
    )
    good = claims(iss="https://issuer.test", aud="courtyard")
    assert (await rt.client.get("/api/health/", headers=bearer(hs256(good)))).status_code == 200
    token = hs256(claims(**{"iss": "https://issuer.test", "aud": "courtyard", **changes}))
    answer = await rt.client.get("/api/health/", headers=bearer(token))
    assert answer.status_code == 401, answer.text
    assert error(answer) == code


async def test_issuer_audience_and_leeway_accept_a_good_token(courtyard, plugin_dir):
    add_who(plugin_dir)
    rt = await courtyard(
        entry_points=False,
        jwt_secret=SECRET,
        jwt_issuer="https://issuer.test",
        jwt_audience="courtyard",
        jwt_leeway=60,
    )
    now = int(time.time())
    token = hs256(
        claims(iss="https://issuer.test", aud=["other", "courtyard"], exp=now - 10, nbf=now + 10)
    )
    assert (await who(rt, token)).json()["subject"] == "user-1"  # within the leeway


async def test_tampered_tokens_are_refused(courtyard):
    rt = await courtyard(entry_points=False, jwt_secret=SECRET)
    good = hs256(claims(roles=["admin"]))
    header, payload, signature = good.split(".")
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    forged_payload = b64(json.dumps(claims(roles=["admin"], sub="mallory")).encode())
    candidates = {
        "flipped signature byte": f"{header}.{payload}.{flipped}",
        "changed payload": f"{header}.{forged_payload}.{signature}",
        "alg none": unsigned(claims(roles=["admin"])),
        "alg none, no signature dot": unsigned(claims(roles=["admin"])).rstrip("."),
        "other secret": hs256(claims(roles=["admin"]), secret="x" * 40),
        "garbage": "a.b.c",
    }
    for name, token in candidates.items():
        answer = await rt.client.post("/api/plugins/reload", headers=bearer(token))
        assert answer.status_code == 401, name
        assert error(answer) in ("INVALID_TOKEN", "INVALID_API_KEY"), name


async def test_an_hmac_token_signed_with_the_jwks_public_key_is_refused(courtyard, tmp_path):
    key = rsa_key("k1")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(key)))
    rt = await courtyard(entry_points=False, jwks_file=path)
    public_pem = key.as_pem(private=False)
    # The classic confusion attack: the public key, which anyone has, as an HMAC secret.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(claims(roles=["admin"])).encode())
    import hashlib
    import hmac

    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{b64(mac)}"
    answer = await rt.client.post("/api/plugins/reload", headers=bearer(forged))
    assert answer.status_code == 401 and error(answer) == "INVALID_TOKEN"
    assert "HS256" in answer.json()["error"]["message"]
    # Even with HS256 allowed and a secret set, the public key is no secret.
    rt2 = await courtyard(entry_points=False, jwks_file=path, jwt_secret=SECRET)
    answer = await rt2.client.post("/api/plugins/reload", headers=bearer(forged))
    assert answer.status_code == 401 and error(answer) == "INVALID_TOKEN"
    real = sign(key, claims(roles=["admin"]), "RS256", kid="k1")
    assert (await rt2.client.post("/api/plugins/reload", headers=bearer(real))).status_code == 200


@pytest.mark.parametrize(
    ("make_key", "alg"), [(rsa_key, "RS256"), (ec_key, "ES256")], ids=["RS256", "ES256"]
)
async def test_public_key_tokens_from_a_jwks_file(courtyard, plugin_dir, tmp_path, make_key, alg):
    add_who(plugin_dir)
    key, stranger = make_key("k1"), make_key("k1")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(key)))
    rt = await courtyard(entry_points=False, jwks_file=path)
    token = sign(key, claims(tenant_id="t9", roles=["viewer"]), alg, kid="k1")
    me = (await who(rt, token)).json()
    assert me["kind"] == "token" and me["tenant"] == "t9"
    no_kid = sign(key, claims(), alg)  # one key in the set: it is the one
    assert (await who(rt, no_kid)).status_code == 200
    forged = sign(stranger, claims(), alg, kid="k1")  # same kid, another key
    assert error(await who(rt, forged)) == "INVALID_TOKEN"
    refused = await who(rt, sign(make_key("k1"), claims(), alg, kid="nope"))
    assert error(refused) == "INVALID_TOKEN" and "nope" in refused.json()["error"]["message"]


async def test_a_jwks_file_is_read_again_when_it_changes(courtyard, plugin_dir, tmp_path):
    add_who(plugin_dir)
    old, new = rsa_key("old"), ec_key("new")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(old)))
    rt = await courtyard(entry_points=False, jwks_file=path)
    assert (await who(rt, sign(old, claims(), "RS256", kid="old"))).status_code == 200
    path.write_text(json.dumps(jwks(new)))  # rotation: the old key is gone
    assert (await who(rt, sign(new, claims(), "ES256", kid="new"))).status_code == 200
    time.sleep(1.05)  # files are looked at again at most once a second
    assert (await who(rt, sign(old, claims(), "RS256", kid="old"))).status_code == 401
    # A key of the wrong type for the algorithm is not used.
    wrong_type = sign(rsa_key("new"), claims(), "RS256", kid="new")
    assert error(await who(rt, wrong_type)) == "INVALID_TOKEN"


async def test_a_bad_jwks_file_refuses_the_start(courtyard, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text("{not json")
    with pytest.raises(SettingsError, match="jwks_file"):
        await courtyard(entry_points=False, jwks_file=path)
    with pytest.raises(SettingsError, match="jwks_file"):
        await courtyard(entry_points=False, jwks_file=tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("make_key", "alg"), [(rsa_key, "RS256"), (ec_key, "ES256")], ids=["RS256", "ES256"]
)
async def test_public_key_tokens_from_a_jwks_url(courtyard, plugin_dir, make_key, alg):
    add_who(plugin_dir)
    first, second, third = make_key("k1"), make_key("k2"), make_key("k3")
    with jwks_server(jwks(first)) as server:
        rt = await courtyard(entry_points=False, jwks_url=server.url)
        assert len(server.requests) == 1  # fetched at start
        me = await who(rt, sign(first, claims(roles=["viewer"]), alg, kid="k1"))
        assert me.json()["roles"] == ["viewer"]
        assert len(server.requests) == 1  # cached
        # Rotation: a token with an unknown kid makes the runtime fetch the set again...
        server.document = jwks(first, second)
        verifier = rt.dispatcher.services.auth.tokens
        verifier.refetch_interval = 0.5
        time.sleep(0.6)
        assert (await who(rt, sign(second, claims(), alg, kid="k2"))).status_code == 200
        assert len(server.requests) == 2
        # ...but at most once per refetch_interval, however many unknown kids come.
        server.document = jwks(first, second, third)
        late = sign(third, claims(), alg, kid="k3")
        for _ in range(3):
            assert (await who(rt, late)).status_code == 401
        assert len(server.requests) == 2
        time.sleep(0.6)
        assert (await who(rt, late)).status_code == 200
        assert len(server.requests) == 3


async def test_an_unreachable_jwks_url_fails_closed_then_recovers(courtyard, plugin_dir):
    add_who(plugin_dir)
    key = rsa_key("k1")
    with jwks_server(jwks(key)) as server:
        server.status = 503
        rt = await courtyard(entry_points=False, jwks_url=server.url)  # starts anyway
        token = sign(key, claims(), "RS256", kid="k1")
        answer = await who(rt, token)
        assert answer.status_code == 503 and error(answer) == "AUTH_UNAVAILABLE"
        anonymous = await rt.client.post("/api/plugins/reload")
        assert anonymous.status_code == 401  # never open meanwhile
        server.status = 200
        rt.dispatcher.services.auth.tokens.refetch_interval = 0
        assert (await who(rt, token)).status_code == 200


async def test_tokens_are_refused_when_no_issuer_is_set(courtyard):
    rt = await courtyard(entry_points=False)
    await rt.create_key(roles=["admin"])
    token = hs256(claims(roles=["admin"]))
    answer = await rt.client.get("/api/health/", headers=bearer(token))
    assert answer.status_code == 401 and error(answer) == "INVALID_TOKEN"
    assert "no issuer" in answer.json()["error"]["message"]


async def test_an_algorithm_outside_the_allow_list_is_refused(courtyard):
    rt = await courtyard(entry_points=False, jwt_secret=SECRET, jwt_algorithms=["HS512"])
    answer = await rt.client.get("/api/health/", headers=bearer(hs256(claims())))
    assert error(answer) == "INVALID_TOKEN" and "HS256" in answer.json()["error"]["message"]
    hs512 = jwt.encode({"alg": "HS512"}, claims(), OctKey.import_key(SECRET), algorithms=["HS512"])
    assert (await rt.client.get("/api/health/", headers=bearer(hs512))).status_code == 200


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jwt_secret": SECRET, "jwt_algorithms": ["none"]}, "never accepted"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["HS256", "NONE"]}, "never accepted"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["XY999"]}, "unsupported algorithm"),
        ({"jwt_secret": SECRET, "jwt_algorithms": []}, "at least one"),
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["RS256"]}, "no HS algorithm"),
        ({"jwks_url": "http://keys.example.com/jwks.json"}, "use https"),
        ({"jwks_url": "ftp://127.0.0.1/jwks"}, "not an http"),
        ({"jwks_url": "https://a.test/j", "jwks_file": "/tmp/j.json"}, "not both"),
        ({"jwks_url": "https://a.test/j", "jwt_algorithms": ["HS256"]}, "no public-key"),
        ({"roles": {"admin": ["keys:manage"]}}, "built in"),
        ({"roles": {"Bad Name": ["a:b"]}}, "role name"),
        ({"roles": {"ops": ["not a permission"]}}, "not a permission"),
    ],
)
def test_bad_auth_settings_refuse_the_start(tmp_path, settings, message):
    with pytest.raises(SettingsError, match=message):
        Dispatcher(Settings.model_validate({"data_dir": tmp_path, **settings}))
