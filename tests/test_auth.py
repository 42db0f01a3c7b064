"""Entra ID bearer tokens for the admin endpoints: real RS256 tokens from the simulator, over real HTTP, checked
by the real PyJWT-based validator (restricted_sender.entrypoints.auth)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from restricted_sender.entrypoints.auth import FAILURE_HOLD, KID_REFETCH_INTERVAL, TokenValidator
from restricted_sender.errors import ConfigurationError, Forbidden, TransientServiceError, Unauthorized
from restricted_sender.model import Operator
from simulator import Simulator
from simulator.entra import DEFAULT_API_CLIENT_ID, DEFAULT_AUDIENCE, DEFAULT_CALLER_APP_ID, OTHER_TENANT_ID

from .conftest import ROOT, TENANT_ID, tenant, user

ROLE = "Sender.Unblock"
T = TypeVar("T")


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(tenant([user("alice")], []))


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def with_validator(sim: Simulator, use: Callable[[TokenValidator], Awaitable[T]], **options: Any) -> T:
    audiences = options.pop("audiences", [sim.admin_api.audience, sim.admin_api.client_id])
    tenant_id = options.pop("tenant_id", sim.tenant_id)

    async def main() -> T:
        async with httpx.AsyncClient(timeout=5) as client:
            validator = TokenValidator(client, tenant_id, audiences, authority=sim.url, **options)
            return await use(validator)

    return asyncio.run(main())


def authenticate(sim: Simulator, authorization: str | None, *, role: str = ROLE, **options: Any) -> Operator:
    return with_validator(sim, lambda v: v.authenticate(authorization, role=role), **options)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def with_kid(token: str, kid: str) -> str:
    """``token`` with its header's kid replaced (the signature no longer matters: the key lookup comes first)."""
    header = base64.urlsafe_b64encode(json.dumps({"typ": "JWT", "alg": "RS256", "kid": kid}).encode()).rstrip(b"=")
    return header.decode() + token[token.index(".") :]


def routes(sim: Simulator) -> list[str]:
    return [str(r["route"]) for r in sim.requests]


def assert_token_hidden(token: str, *texts: str) -> None:
    for text in texts:
        assert token not in text
        for segment in token.split("."):
            if len(segment) > 8:
                assert segment not in text


# -- the bar: one case per way a token can be wrong ----------------------------------------------------------

REJECTED = [
    pytest.param({"variant": "expired"}, Unauthorized, "token expired", id="expired"),
    pytest.param({"variant": "not-yet-valid"}, Unauthorized, "not yet valid", id="not-yet-valid"),
    pytest.param({"variant": "wrong-issuer"}, Unauthorized, "wrong issuer", id="wrong-issuer"),
    pytest.param({"variant": "wrong-audience"}, Unauthorized, "wrong audience", id="wrong-audience"),
    pytest.param({"variant": "wrong-key"}, Unauthorized, "bad token signature", id="wrong-key"),
    pytest.param({"variant": "alg-none"}, Unauthorized, "RS256 only", id="alg-none"),
    pytest.param({"variant": "hs256"}, Unauthorized, "RS256 only", id="hs256-confusion"),
    pytest.param({"variant": "no-role"}, Forbidden, "lacks the 'Sender.Unblock' app role", id="no-role"),
    pytest.param({"roles": ["Sender.Read"]}, Forbidden, "lacks the 'Sender.Unblock' app role", id="other-role"),
    # Entra signs every tenant's tokens with the same keys: another tenant's token has a good signature.
    pytest.param({"variant": "other-tenant"}, Unauthorized, "wrong issuer", id="other-tenant"),
    pytest.param({"claims": {"tid": OTHER_TENANT_ID}}, Unauthorized, "another tenant", id="other-tid"),
    pytest.param({"version": "1.0", "variant": "other-tenant"}, Unauthorized, "wrong issuer", id="other-tenant-v1"),
    pytest.param({"version": "1.0", "variant": "expired"}, Unauthorized, "token expired", id="expired-v1"),
    *(
        pytest.param({"claims": {claim: None}}, Unauthorized, f"lacks the required '{claim}' claim", id=f"no-{claim}")
        for claim in ("exp", "iat", "iss", "aud", "tid", "oid")
    ),
    pytest.param({"claims": {"exp": "tomorrow"}}, Unauthorized, "exp claim is not a number", id="exp-text"),
    pytest.param({"claims": {"roles": "Sender.Unblock"}}, Unauthorized, "roles claim is not a list", id="roles-text"),
    pytest.param({"claims": {"iat": int(time.time()) + 3600}}, Unauthorized, "issued in the future", id="iat-future"),
    pytest.param(
        {"variant": "app-only", "claims": {"azp": None}}, Unauthorized, "neither a user nor an app", id="nameless"
    ),
]


@pytest.mark.parametrize(("mint", "error", "message"), REJECTED)
def test_a_bad_token_is_refused_with_a_clear_message_that_never_echoes_it(
    sim: Simulator, mint: dict[str, Any], error: type[Exception], message: str
) -> None:
    token = sim.mint_token(**mint)
    with pytest.raises(error, match=message) as caught:
        authenticate(sim, bearer(token))
    assert type(caught.value) is error
    assert caught.value.status == (403 if error is Forbidden else 401)  # type: ignore[attr-defined]
    assert caught.value.__cause__ is None
    assert_token_hidden(token, str(caught.value), repr(caught.value), json.dumps(caught.value.to_body()))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        pytest.param(None, "missing Authorization header", id="missing-header"),
        pytest.param("", "missing Authorization header", id="empty-header"),
        pytest.param("Bearer", "missing bearer token", id="bearer-without-token"),
        pytest.param("Basic YWRtaW46aHVudGVyMg==", "must use the Bearer scheme", id="basic-scheme"),
        pytest.param("Bearer not-a-token", "malformed token", id="garbage"),
        pytest.param("Bearer a.b.c", "malformed token", id="three-garbage-parts"),
        pytest.param("Bearer " + "A" * 20_000, "too large", id="huge"),
    ],
)
def test_a_missing_or_unreadable_credential_is_401(sim: Simulator, authorization: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message) as caught:
        authenticate(sim, authorization)
    if authorization and len(authorization) > 8:
        assert authorization[7:] not in str(caught.value)


def test_a_valid_token_gives_the_operator(sim: Simulator) -> None:
    object_id = str(uuid.uuid4())
    operator = authenticate(sim, bearer(sim.mint_token(upn="alice@contoso.com", object_id=object_id)))
    assert operator == Operator(
        object_id=object_id, name="alice@contoso.com", roles=frozenset({ROLE}), app_id=DEFAULT_CALLER_APP_ID
    )


def test_the_default_operator_is_admin_at_the_first_verified_domain(sim: Simulator) -> None:
    operator = authenticate(sim, "bearer " + sim.mint_token())  # the scheme is case-insensitive
    assert operator.name == "admin@contoso.com"
    assert operator.object_id


def test_a_v1_token_is_accepted_with_its_upn(sim: Simulator) -> None:
    token = sim.mint_token(version="1.0", upn="alice@contoso.com")
    operator = authenticate(sim, bearer(token))
    assert operator.name == "alice@contoso.com"
    assert operator.app_id == DEFAULT_CALLER_APP_ID
    # ... and a v1 token carrying unique_name only (older shapes) names the operator too.
    token = sim.mint_token(version="1.0", upn="bob@contoso.com", claims={"upn": None})
    assert authenticate(sim, bearer(token)).name == "bob@contoso.com"


@pytest.mark.parametrize("version", ["2.0", "1.0"])
def test_an_app_only_token_names_the_app(sim: Simulator, version: str) -> None:
    app_id = str(uuid.uuid4())
    operator = authenticate(sim, bearer(sim.mint_token(variant="app-only", version=version, app_id=app_id)))
    assert operator.name == app_id
    assert operator.app_id == app_id
    assert operator.roles == frozenset({ROLE})


def test_any_of_several_roles_will_do(sim: Simulator) -> None:
    token = sim.mint_token(roles=["Sender.Read"])
    roles = ("Sender.Read", ROLE)
    assert authenticate(sim, bearer(token), role=roles).roles == frozenset({"Sender.Read"})
    with pytest.raises(Forbidden, match=re.escape("lacks all of the app roles 'Sender.Audit', 'Sender.Unblock'")):
        authenticate(sim, bearer(token), role=("Sender.Audit", ROLE))
    with pytest.raises(ConfigurationError, match="must name the app role"):
        authenticate(sim, bearer(token), role=())


def test_aclose_closes_the_client_it_was_given() -> None:
    async def main() -> bool:
        client = httpx.AsyncClient()
        await TokenValidator(client, TENANT_ID, [DEFAULT_AUDIENCE]).aclose()
        return client.is_closed

    assert asyncio.run(main())


def test_the_client_id_is_an_accepted_audience_too(sim: Simulator) -> None:
    token = sim.mint_token(audience=sim.admin_api.client_id)
    assert authenticate(sim, bearer(token)).name == "admin@contoso.com"
    with pytest.raises(Unauthorized, match="wrong audience"):
        authenticate(sim, bearer(token), audiences=[DEFAULT_AUDIENCE])


def test_clock_skew_within_the_leeway_is_tolerated(sim: Simulator) -> None:
    now = int(time.time())
    token = sim.mint_token(claims={"iat": now - 3600, "nbf": now - 3600, "exp": now - 30})
    assert authenticate(sim, bearer(token)).name == "admin@contoso.com"
    with pytest.raises(Unauthorized, match="token expired"):
        authenticate(sim, bearer(token), leeway=0)
    early = sim.mint_token(claims={"nbf": now + 30})
    assert authenticate(sim, bearer(early)).name == "admin@contoso.com"
    with pytest.raises(Unauthorized, match="not yet valid"):
        authenticate(sim, bearer(early), leeway=0)
    assert authenticate(sim, bearer(sim.mint_token(claims={"nbf": None}))).name == "admin@contoso.com"


def test_a_token_from_another_simulator_has_an_unknown_key(
    sim: Simulator, simulator_factory: Callable[[dict[str, Any]], Simulator]
) -> None:
    other = simulator_factory(tenant([user("alice")], []))
    with pytest.raises(Unauthorized, match="unknown key"):
        authenticate(sim, bearer(other.mint_token()))


# -- metadata and keys: fetched once, refetched sparingly, shared, failures are transient -------------------


def test_metadata_and_keys_are_fetched_once_for_many_validations(sim: Simulator) -> None:
    tokens = [sim.mint_token(upn=f"admin{i}@contoso.com") for i in range(20)]

    async def many(validator: TokenValidator) -> list[Operator]:
        return [await validator.authenticate(bearer(t), role=ROLE) for t in tokens]

    operators = with_validator(sim, many)
    assert [o.name for o in operators] == [f"admin{i}@contoso.com" for i in range(20)]
    assert routes(sim) == ["entra.metadata", "entra.keys"]
    assert all(r["status"] == 200 for r in sim.requests)


def test_metadata_and_keys_are_refreshed_after_the_ttl(sim: Simulator) -> None:
    clock = Clock()
    token = sim.mint_token(lifetime=7200)

    async def across_the_ttl(validator: TokenValidator) -> None:
        await validator.authenticate(bearer(token), role=ROLE)
        clock.offset = 599
        await validator.authenticate(bearer(token), role=ROLE)
        clock.offset = 601
        await validator.authenticate(bearer(token), role=ROLE)

    with_validator(sim, across_the_ttl, clock=clock, metadata_ttl=600)
    assert routes(sim) == ["entra.metadata", "entra.keys"] * 2


def test_a_failed_refresh_keeps_the_cached_keys(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    token = sim.mint_token(lifetime=7200)

    async def refresh_fails(validator: TokenValidator) -> list[str]:
        await validator.authenticate(bearer(token), role=ROLE)
        clock.offset = 700
        sim.inject_fault("entra.metadata", status=503, times=None)
        names = [(await validator.authenticate(bearer(token), role=ROLE)).name for _ in range(3)]
        sim.clear_faults()
        clock.offset = 700 + 61  # the next attempt waits a minute
        names.append((await validator.authenticate(bearer(token), role=ROLE)).name)
        return names

    with caplog.at_level(logging.WARNING, logger="restricted_sender"):
        assert with_validator(sim, refresh_fails, clock=clock, metadata_ttl=600) == ["admin@contoso.com"] * 4
    assert [(r["route"], r["status"]) for r in sim.requests] == [
        ("entra.metadata", 200),
        ("entra.keys", 200),
        ("entra.metadata", 503),
        ("entra.metadata", 200),
        ("entra.keys", 200),
    ]
    assert "keeping the cached ones" in caplog.text
    assert_token_hidden(token, caplog.text)


def test_an_unknown_kid_refetches_the_keys_at_most_once_per_five_minutes(sim: Simulator) -> None:
    clock = Clock()
    valid = sim.mint_token(lifetime=7200)

    async def flood(validator: TokenValidator) -> list[list[str]]:
        seen: list[list[str]] = []
        await validator.authenticate(bearer(valid), role=ROLE)
        seen.append(routes(sim))
        for _ in range(25):
            with pytest.raises(Unauthorized, match="unknown key"):
                await validator.authenticate(bearer(with_kid(valid, uuid.uuid4().hex)), role=ROLE)
        seen.append(routes(sim))
        clock.offset = KID_REFETCH_INTERVAL - 1
        with pytest.raises(Unauthorized, match="unknown key"):
            await validator.authenticate(bearer(with_kid(valid, "still-unknown")), role=ROLE)
        seen.append(routes(sim))
        clock.offset = KID_REFETCH_INTERVAL + 1
        results = await asyncio.gather(
            *(validator.authenticate(bearer(with_kid(valid, f"k{i}")), role=ROLE) for i in range(10)),
            return_exceptions=True,
        )
        assert all(isinstance(r, Unauthorized) for r in results)
        seen.append(routes(sim))
        await validator.authenticate(bearer(valid), role=ROLE)  # the real key is still there
        seen.append(routes(sim))
        return seen

    seen = with_validator(sim, flood, clock=clock)
    first = ["entra.metadata", "entra.keys"]
    assert seen == [
        first,
        [*first, "entra.keys"],
        [*first, "entra.keys"],
        [*first, "entra.keys", "entra.keys"],
        [*first, "entra.keys", "entra.keys"],
    ]


def test_concurrent_validations_share_one_fetch(sim: Simulator) -> None:
    sim.set_latency("entra.metadata", 0.2)
    tokens = [sim.mint_token(upn=f"admin{i}@contoso.com") for i in range(12)]

    async def together(validator: TokenValidator) -> list[Operator]:
        return list(await asyncio.gather(*(validator.authenticate(bearer(t), role=ROLE) for t in tokens)))

    operators = with_validator(sim, together)
    assert sorted(o.name for o in operators) == sorted(f"admin{i}@contoso.com" for i in range(12))
    assert routes(sim) == ["entra.metadata", "entra.keys"]


@pytest.mark.parametrize(
    ("route", "fault"),
    [
        pytest.param("entra.metadata", {"status": 503, "retry_after": 7}, id="metadata-503"),
        pytest.param("entra.keys", {"status": 503}, id="keys-503"),
        pytest.param("entra.metadata", {"status": 429, "retry_after": 2}, id="metadata-429"),
        pytest.param("entra.metadata", {"kind": "malformed"}, id="metadata-malformed"),
        pytest.param("entra.keys", {"status": 200, "body": {"keys": []}}, id="keys-empty"),
        pytest.param("entra.metadata", {"status": 200, "body": {"issuer": "x"}}, id="metadata-without-jwks-uri"),
    ],
)
def test_an_identity_failure_is_transient_and_held_only_briefly(
    sim: Simulator, route: str, fault: dict[str, Any]
) -> None:
    token = sim.mint_token()
    sim.inject_fault(route, **fault)
    clock = Clock()

    async def thrice(validator: TokenValidator) -> Operator:
        with pytest.raises(TransientServiceError) as caught:
            await validator.authenticate(bearer(token), role=ROLE)
        assert caught.value.service == "identity"
        assert caught.value.status == 503
        if fault.get("retry_after"):
            assert caught.value.retry_after == fault["retry_after"]
        assert_token_hidden(token, str(caught.value))
        fetched = len(sim.requests)
        with pytest.raises(TransientServiceError) as held:  # within the hold: answered from memory
            await validator.authenticate(bearer(token), role=ROLE)
        assert (len(sim.requests), held.value.message) == (fetched, caught.value.message)
        assert held.value.retry_after is not None
        assert 1 <= held.value.retry_after <= max(FAILURE_HOLD, 7)
        clock.offset = FAILURE_HOLD
        return await validator.authenticate(bearer(token), role=ROLE)

    assert with_validator(sim, thrice, clock=clock).name == "admin@contoso.com"


def test_an_unreachable_authority_is_transient(sim: Simulator) -> None:
    url = sim.url
    sim.stop()

    async def main() -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            validator = TokenValidator(client, TENANT_ID, [DEFAULT_AUDIENCE], authority=url)
            with pytest.raises(TransientServiceError, match="identity: cannot fetch the OpenID metadata"):
                await validator.authenticate(bearer(_well_formed_token()), role=ROLE)

    asyncio.run(main())


def _well_formed_token() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"k"}').rstrip(b"=").decode()
    return f"{header}.e30.c2ln"


def test_an_unknown_tenant_is_a_configuration_error(sim: Simulator) -> None:
    with pytest.raises(ConfigurationError, match="check the tenant id"):
        authenticate(sim, bearer(sim.mint_token()), tenant_id=OTHER_TENANT_ID)


def test_the_validator_refuses_unusable_settings() -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as client:
            with pytest.raises(ConfigurationError, match="GUID"):
                TokenValidator(client, "contoso.com", [DEFAULT_AUDIENCE])
            with pytest.raises(ConfigurationError, match="audience"):
                TokenValidator(client, TENANT_ID, [])
            validator = TokenValidator(client, TENANT_ID.upper(), DEFAULT_AUDIENCE)
            assert validator.audiences == (DEFAULT_AUDIENCE,)
            assert validator.tenant_id == TENANT_ID
            assert repr(validator).startswith("TokenValidator(tenant_id=")

    asyncio.run(main())


def test_only_the_auth_module_imports_jwt_and_cryptography() -> None:
    """The webhook path must not pay for them: the admin endpoints import restricted_sender.entrypoints.auth lazily."""
    sources = [ROOT / "function_app.py", *sorted((ROOT / "restricted_sender").rglob("*.py"))]
    importers = [
        path.relative_to(ROOT).as_posix()
        for path in sources
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith(("import jwt", "from jwt", "import cryptography", "from cryptography"))
    ]
    assert importers
    assert set(importers) == {"restricted_sender/entrypoints/auth.py"}


# -- the simulator's side: metadata, keys, the control endpoint, x-adminApi --------------------------------


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=5) as c:
        yield c


def test_the_simulator_serves_entra_shaped_metadata_and_keys(sim: Simulator, client: httpx.Client) -> None:
    metadata = client.get(f"/{sim.tenant_id}/v2.0/.well-known/openid-configuration").json()
    assert metadata["issuer"] == f"{sim.url}/{sim.tenant_id}/v2.0"
    assert metadata["jwks_uri"] == f"{sim.url}/{sim.tenant_id}/discovery/v2.0/keys"
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert metadata["token_endpoint"].endswith("/oauth2/v2.0/token")
    assert metadata["authorization_endpoint"].endswith("/oauth2/v2.0/authorize")
    # A verified domain name works in place of the tenant id, as with Entra.
    by_domain = client.get("/contoso.com/v2.0/.well-known/openid-configuration").json()
    assert by_domain["issuer"] == metadata["issuer"]
    (key,) = client.get(metadata["jwks_uri"]).json()["keys"]
    assert {"kty": "RSA", "use": "sig"}.items() <= key.items()
    assert key["kid"] == key["x5t"]
    assert key["e"] == "AQAB"
    assert len(key["n"]) > 300
    header = json.loads(base64.urlsafe_b64decode(sim.mint_token().split(".")[0] + "=="))
    assert header == {"typ": "JWT", "alg": "RS256", "kid": key["kid"]}
    assert "d" not in key  # never the private part


def test_the_simulator_answers_an_unknown_tenant_like_entra(sim: Simulator, client: httpx.Client) -> None:
    for path in (f"/{OTHER_TENANT_ID}/v2.0/.well-known/openid-configuration", "/fabrikam.com/discovery/v2.0/keys"):
        response = client.get(path)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_tenant"
        assert response.json()["error_description"].startswith("AADSTS90002: Tenant '")
    assert client.post(f"/{sim.tenant_id}/discovery/v2.0/keys").status_code == 405


def test_the_claims_of_a_minted_token(sim: Simulator) -> None:
    def claims(token: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))  # type: ignore[no-any-return]

    v2 = claims(sim.mint_token(upn="alice@contoso.com"))
    assert v2["iss"] == f"{sim.url}/{sim.tenant_id}/v2.0"
    assert v2["ver"] == "2.0"
    assert v2["tid"] == sim.tenant_id
    assert v2["aud"] == DEFAULT_AUDIENCE
    assert v2["preferred_username"] == "alice@contoso.com"
    assert {"iat", "nbf", "exp", "oid", "sub", "azp", "name", "roles"} <= v2.keys()
    assert "scp" not in v2
    v1 = claims(sim.mint_token(version="1.0", upn="alice@contoso.com"))
    assert v1["iss"] == f"https://sts.windows.net/{sim.tenant_id}/"
    assert v1["ver"] == "1.0"
    assert v1["upn"] == v1["unique_name"] == "alice@contoso.com"
    assert v1["appid"] == DEFAULT_CALLER_APP_ID
    app = claims(sim.mint_token(variant="app-only"))
    assert app["idtyp"] == "app"
    assert app["sub"] == app["oid"]
    assert "preferred_username" not in app
    assert "roles" not in claims(sim.mint_token(variant="no-role"))
    with pytest.raises(ValueError, match="unknown token variant"):
        sim.mint_token(variant="forged")


def test_the_control_endpoint_mints_tokens_for_a_person_trying_it_by_hand(sim: Simulator, client: httpx.Client) -> None:
    answer = client.post("/_sim/tokens", json={"roles": [ROLE], "upn": "alice@contoso.com"}).json()
    assert answer["token_type"] == "Bearer"
    assert 3590 <= answer["expires_in"] <= 3600
    assert authenticate(sim, bearer(answer["access_token"])).name == "alice@contoso.com"
    default = client.post("/_sim/tokens").json()["access_token"]  # no body: a valid default token
    assert authenticate(sim, bearer(default)).name == "admin@contoso.com"
    expired = client.post("/_sim/tokens", json={"variant": "expired"}).json()
    assert expired["expires_in"] == 0
    with pytest.raises(Unauthorized, match="expired"):
        authenticate(sim, bearer(expired["access_token"]))
    for body, message in [
        ({"variant": "forged"}, "unknown token variant"),
        ({"roles": ROLE}, "roles must be a list"),
        ({"scope": "x"}, "unknown keys: scope"),
        ([1], "must be a JSON object"),
    ]:
        response = client.post("/_sim/tokens", json=body)
        assert response.status_code == 400
        assert message in response.json()["error"]["message"]
    assert not [r for r in sim.requests if r["route"] == "control"]


def test_the_tenant_file_sets_the_admin_api_audience(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> None:
    admin_api = {"audience": "api://contoso-unblock", "clientId": "0e3f9b51-2c7a-4d86-b1e4-9a5c3d7f2b60"}
    sim = simulator_factory(tenant([user("alice")], [], **{"x-adminApi": admin_api}))
    assert (sim.admin_api.audience, sim.admin_api.client_id) == (admin_api["audience"], admin_api["clientId"])
    token = sim.mint_token()
    assert authenticate(sim, bearer(token), audiences=[admin_api["audience"]]).name == "admin@contoso.com"
    with pytest.raises(Unauthorized, match="wrong audience"):
        authenticate(sim, bearer(token), audiences=[DEFAULT_AUDIENCE, DEFAULT_API_CLIENT_ID])


@pytest.mark.parametrize(
    ("admin_api", "message"),
    [
        ("api://x", "must be a mapping"),
        ({"audience": ""}, "audience must be a non-empty string"),
        ({"clientid": "x"}, "unknown keys: clientid"),
    ],
)
def test_a_bad_admin_api_entry_is_refused(admin_api: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Simulator(tenant([user("alice")], [], **{"x-adminApi": admin_api}))
