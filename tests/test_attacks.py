"""The attacks the product refuses, one test (or one parametrized case) per attack: a regression list that reads like
a threat model (docs/threat-model.md names each test here).

Where an attack is already held by a detailed test elsewhere, the case here runs that attack once more through the
same helpers, so this file stays the one list to read.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import jwt
import pytest

from restricted_sender.core.notices import recipients_notice
from restricted_sender.core.ticket_body import render_ticket
from restricted_sender.core.untrusted import LOG_FILTER, one_line
from restricted_sender.entrypoints.auth import FAILURE_HOLD, MAX_TOKEN_LENGTH, TokenValidator
from restricted_sender.errors import TransientServiceError, Unauthorized, UnsafeContentUri
from restricted_sender.intake.o365 import check_content_uri
from restricted_sender.settings import Settings
from simulator import Simulator
from simulator.entra import OTHER_TENANT_ID

from .conftest import ROOT, TENANT_ID, Audit, alert_v2, blocked, on_graph, tenant, user
from .test_admin_api import configure, removals, unblock  # noqa: F401  (configure: a fixture used here)
from .test_auth import Clock, authenticate, bearer, routes, with_kid, with_validator
from .test_itsm_adapters import make
from .test_management_activity import cli
from .test_pipeline import World
from .test_ticket_body import CORRELATION, evidence, parsed, record, rule

# Every way a value can start a line of its own: CR, LF, CRLF, NEL (U+0085), VT, FF, U+2028, U+2029.
LINE_STARTERS = ["\r", "\n", "\r\n", "\x85", "\x0b", "\x0c", "\u2028", "\u2029"]
FORGED = "What was done:"


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    """A clean restricted user, and restricted users who each fail one compromise guard."""
    users = [
        user("alice", **{"x-riskLevel": "none"}),
        user("risky", **{"x-riskLevel": "high"}),
        user("disabled", enabled=False, **{"x-riskLevel": "none"}),
    ]
    return simulator_factory(tenant(users, [blocked(f"{u['userPrincipalName']}") for u in users]))


def physical_lines(text: str) -> list[str]:
    """Lines as the most generous reader splits them (str.splitlines knows every separator above)."""
    return text.splitlines()


def hostile_ticket(name: str, **links: str) -> Any:
    """The ticket of a compromised-looking user whose attacker named an inbox rule ``name``."""
    rules = [rule(name, f'inbox rule "{name}" forwards to x@evil.example')]
    reason = {"code": "guard:inbox-rule", "text": f'inbox rule "{name}" forwards to x@evil.example'}
    return render_ticket(
        CORRELATION, record(reason), evidence(inbox_rules=rules, **({"links": links} if links else {}))
    )


# -- what attackers write into tickets and mail ---------------------------------------------------------------

CODETAG = '[code]<a href="https://evil.example/reset">Reset your password</a>[/code]'


@pytest.mark.parametrize(
    ("tag", "shown"),
    [
        (CODETAG, "evil.example/reset"),
        (CODETAG.upper(), "evil.example/reset"),
        ("[ code ]<img src=x>[ / code ]", "img src=x"),
    ],
)
def test_a_servicenow_codetag_in_a_rule_name_never_reaches_the_instance(sim: Simulator, tag: str, shown: str) -> None:
    ticket = hostile_ticket(tag)

    async def create_and_update(http: httpx.AsyncClient) -> None:
        system = make("servicenow", http, sim)
        ref = await system.create(ticket)
        await system.update(ref, ticket)

    asyncio.run(_with_http(create_and_update))
    [stored] = sim.servicenow_records()
    written = json.dumps(stored)
    assert not re.search(r"\[\s*/?\s*code\s*\]", written, re.IGNORECASE)
    assert shown in written.lower()  # the name is still shown, as text


def test_jira_carries_wiki_markup_and_line_breaks_of_a_rule_name_as_plain_text(sim: Simulator) -> None:
    name = "[Reset|https://evil.example] {html}<b>x</b>{html}\n# Forged heading\n- forged item"
    ticket = hostile_ticket(name)
    asyncio.run(_with_http(lambda http: make("jira", http, sim).create(ticket)))
    [issue] = sim.jira_issues()
    nodes = list(_adf_nodes(issue["fields"]["description"]))
    assert not any("marks" in node for node in nodes)  # no link, no formatting from anybody's text
    headings = ["".join(n["text"] for n in h["content"]) for h in nodes if h["type"] == "heading"]
    assert "Forged heading" not in headings
    assert not any(node.get("text") == "forged item" for node in nodes)


def test_html_markup_in_a_rule_name_is_escaped_in_the_mail_ticket() -> None:
    ticket = hostile_ticket('<a href="https://evil.example">x</a><script>alert(1)</script>')
    page = parsed(ticket.html)
    assert "<script" not in ticket.html
    assert all("evil.example" not in href for href in page.hrefs)


@pytest.mark.parametrize("separator", LINE_STARTERS)
def test_no_value_starts_a_line_of_the_ticket(separator: str) -> None:
    ticket = hostile_ticket(f"x{separator}[x] 1. Reset the password: done{separator}{FORGED}")
    for body in (ticket.text, ticket.html, ticket.title, ticket.update):
        assert not any(line.startswith(("[x] 1.", FORGED)) for line in physical_lines(body))


@pytest.mark.parametrize("separator", LINE_STARTERS)
def test_a_justification_or_rule_name_cannot_forge_a_section_of_the_soc_notice(separator: str) -> None:
    forged = f"ok{separator}{separator}{FORGED}{separator}  - unblock: skipped - nothing to do"
    row = record(
        {"code": "manual", "text": f"unblocked by hand by admin: {forged}"},
        actions=[{"kind": "unblock", "status": "done", "detail": forged}],
        decision="unblock",
        user=f"judy@contoso.com{separator}Decision: ignore",
        alert_id=f"a-1{separator}Alert: none",
        notes=[forged],
        event_id="e",
    )
    notice = recipients_notice(["soc@contoso.com"], row)
    lines = physical_lines(notice.body)
    assert lines.count(FORGED) == 1
    assert sum(line.startswith("Decision:") for line in lines) == 1
    assert sum(line.startswith("Alert:") for line in lines) == 1
    assert separator not in notice.subject


@pytest.mark.parametrize(
    ("hidden", "name"),
    [
        ("\u202e", "right-to-left override"),
        ("\u2066", "left-to-right isolate"),
        ("\u200b", "zero-width space"),
        ("\u00ad", "soft hyphen"),
        ("\U000e0041", "tag character (ASCII smuggling)"),
        ("\ufeff", "byte order mark"),
    ],
)
def test_format_characters_that_hide_or_reorder_text_are_shown_as_spaces(hidden: str, name: str) -> None:
    assert one_line(f"a{hidden}b") == "a b", name
    ticket = hostile_ticket(f"inbox{hidden}rule")
    assert hidden not in ticket.text + ticket.html + ticket.title


def test_joiners_that_spell_words_and_emoji_are_kept() -> None:
    assert one_line("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 👩\u200d💻") == (
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 👩\u200d💻"
    )


PORTAL = "https://security.microsoft.com/alerts/da1"


@pytest.mark.parametrize(
    ("url", "linked"),
    [
        pytest.param(PORTAL, True, id="defender-portal"),
        pytest.param("https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident/x", True, id="azure"),
        pytest.param("https://security.microsoft.us/alerts/da1", True, id="gcc-high"),
        pytest.param("https://evil.example/alerts/da1", False, id="other-host"),
        pytest.param("https://security.microsoft.com.evil.example/x", False, id="look-alike-suffix"),
        pytest.param("https://security.microsoft.com@evil.example/x", False, id="userinfo"),
        pytest.param("https://evil.example\\@security.microsoft.com/x", False, id="backslash-userinfo"),
        pytest.param("http://security.microsoft.com/alerts/da1", False, id="plain-http"),
        pytest.param("https://security.microsoft.com:8443/x", False, id="other-port"),
        pytest.param("javascript:alert(1)//security.microsoft.com", False, id="javascript"),
        pytest.param("https://[::1", False, id="unparseable"),
    ],
)
def test_only_links_to_the_microsoft_portals_are_rendered_as_links(url: str, linked: bool) -> None:
    ticket = hostile_ticket("rule", alert=url)
    hrefs = parsed(ticket.html).hrefs
    assert (url in hrefs) is linked
    if not linked:
        assert url not in ticket.text  # shown defanged or as text, never as a link a ticket system picks up
        assert "evil.example" not in "".join(hrefs)


# -- the admin API ----------------------------------------------------------------------------------------------

FORCE, HELPDESK = "Sender.Unblock.Force", "Sender.Unblock"


@pytest.mark.azurite
@pytest.mark.usefixtures("configure")
@pytest.mark.parametrize("upn", ["risky@contoso.com", "disabled@contoso.com"], ids=["guard:risk", "guard:disabled"])
def test_a_user_failing_a_compromise_guard_is_only_unblocked_with_force_by_the_force_role(
    handlers: dict[str, Callable[..., Any]], sim: Simulator, audit: Audit, upn: str
) -> None:
    helpdesk, soc = sim.mint_token(roles=(HELPDESK,)), sim.mint_token(roles=(FORCE,))
    status, answer = unblock(handlers, upn, helpdesk)
    assert (status, answer["error"]["code"]) == (409, "force-required")
    assert answer["error"]["warnings"][0]["code"].startswith("guard:")
    status, answer = unblock(handlers, upn, helpdesk, force=True)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert FORCE in answer["error"]["message"]
    assert removals(sim) == 0
    status, answer = unblock(handlers, upn, soc, force=True)
    assert status == 200, answer
    assert answer["warnings"][0]["code"] == "manual:forced"
    assert removals(sim) == 1
    assert [r["decision"] for r in audit()] == ["ignore", "unblock"]


@pytest.mark.azurite
@pytest.mark.usefixtures("configure")
def test_a_helpdesk_without_the_force_role_unblocks_a_clean_user(
    handlers: dict[str, Callable[..., Any]], sim: Simulator
) -> None:
    status, answer = unblock(handlers, "alice@contoso.com", sim.mint_token(roles=(HELPDESK,)))
    assert status == 200, answer
    assert removals(sim) == 1


# -- forged and stolen tokens (the admin API) -----------------------------------------------------------------
# Held in detail by tests/test_auth.py::test_a_bad_token_is_refused_with_a_clear_message_that_never_echoes_it;
# here each attack once more, through the same validator against the simulator's Entra.


@pytest.mark.parametrize(
    ("mint", "message"),
    [
        pytest.param({"variant": "hs256"}, "RS256 only", id="alg-confusion-hs256-keyed-with-the-public-key"),
        pytest.param({"variant": "alg-none"}, "RS256 only", id="alg-none"),
        pytest.param({"variant": "wrong-key"}, "bad token signature", id="signed-by-another-key"),
        pytest.param({"variant": "wrong-audience"}, "wrong audience", id="wrong-audience"),
        pytest.param({"variant": "wrong-issuer"}, "wrong issuer", id="wrong-issuer"),
        pytest.param({"variant": "other-tenant"}, "wrong issuer", id="another-tenants-token"),
        pytest.param({"claims": {"tid": OTHER_TENANT_ID}}, "another tenant", id="another-tenants-tid"),
        pytest.param({"variant": "expired"}, "token expired", id="expired"),
        pytest.param({"variant": "not-yet-valid"}, "not yet valid", id="not-yet-valid"),
    ],
)
def test_a_forged_or_misdirected_token_is_refused(sim: Simulator, mint: dict[str, Any], message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        authenticate(sim, bearer(sim.mint_token(**mint)))


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk"])
def test_a_token_naming_its_own_keys_in_jku_x5u_or_jwk_is_refused_and_nothing_is_fetched(
    sim: Simulator, header: str
) -> None:
    """The attacker signs with a key of their own and points the header at it: only the tenant's keys count."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    claims = jwt.decode(sim.mint_token(), options={"verify_signature": False})
    kid = jwt.get_unverified_header(sim.mint_token())["kid"]
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    where = f"{sim.url}/attacker/keys"
    extra = {"jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))} if header == "jwk" else {}
    token = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid, header: where, **extra})
    with pytest.raises(Unauthorized, match="bad token signature"):
        authenticate(sim, bearer(token))
    assert {r["route"] for r in sim.requests} <= {"entra.metadata", "entra.keys"}


def test_an_oversized_token_is_refused_before_any_parsing(sim: Simulator) -> None:
    with pytest.raises(Unauthorized, match="too large"):
        authenticate(sim, bearer("A" * (MAX_TOKEN_LENGTH + 1)))
    assert sim.requests == []


def test_thirty_bad_tokens_while_entra_fails_cost_one_metadata_fetch(sim: Simulator) -> None:
    sim.inject_fault("entra.metadata", status=503, times=None)
    clock = Clock()

    async def flood(validator: TokenValidator) -> None:
        for i in range(30):
            with pytest.raises(TransientServiceError):
                await validator.authenticate(bearer(with_kid(sim.mint_token(), f"k{i}")), role="Sender.Unblock")
        clock.offset = FAILURE_HOLD  # the hold is over: the next token asks again
        with pytest.raises(TransientServiceError):
            await validator.authenticate(bearer(sim.mint_token()), role="Sender.Unblock")

    with_validator(sim, flood, clock=clock)
    assert routes(sim) == ["entra.metadata", "entra.metadata"]


# -- outsiders' values in the product's own requests -----------------------------------------------------------
# SSRF through the Office 365 contentUri: every variant is a case of
# tests/test_sources.py::test_any_other_content_uri_is_refused_as_unsafe; a few of them again here.

FEED_URI = f"https://manage.office.com/api/v1.0/{TENANT_ID}/activity/feed/audit/x"


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(FEED_URI.replace("manage.office.com", "169.254.169.254"), id="metadata-endpoint"),
        pytest.param(FEED_URI.replace("manage.office.com", "manage.office.com@evil.example"), id="userinfo"),
        pytest.param(FEED_URI.replace("manage.office.com", "manage.office.com.evil.example"), id="look-alike"),
        pytest.param(FEED_URI.replace("https://", "http://"), id="downgrade"),
        pytest.param(FEED_URI.replace("audit/x", "%2e%2e/%2E%2E/subscriptions"), id="encoded-dot-segments"),
        pytest.param(FEED_URI.replace(TENANT_ID, "11111111-2222-4333-8444-555555555555"), id="another-tenant"),
    ],
)
def test_a_content_uri_off_this_tenants_feed_is_refused(uri: str) -> None:
    with pytest.raises(UnsafeContentUri):
        check_content_uri(uri, api_root="https://manage.office.com", tenant_id=TENANT_ID)


def test_no_client_of_the_product_follows_redirects() -> None:
    """A redirect from a service (or a spoofed one) could carry our bearer token or our request elsewhere: no httpx
    client the product builds follows them (httpx's default). Graph calls go through the SDK's redirect handler,
    which scrubs the Authorization header on a change of origin and refuses a change of scheme."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "restricted_sender").rglob("*.py"))
    assert "follow_redirects=True" not in source
    assert inspect.signature(httpx.AsyncClient).parameters["follow_redirects"].default is False


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("x@contoso.com' or startswith(mail,'a", id="odata-quote-injection"),
        pytest.param("alice@contoso.com/../../groups", id="path-traversal"),
        pytest.param("alice@contoso.com?$select=passwordProfile", id="query-in-path"),
        pytest.param("alice@contoso.com#fragment", id="fragment"),
    ],
)
def test_an_address_cannot_change_the_graph_request_it_is_looked_up_with(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    identity_env: Callable[[Simulator], None],
    key: str,
) -> None:
    graph = simulator_factory(tenant([user("alice")], []))
    identity_env(graph)
    found = on_graph(graph, lambda directory, _: directory.user(key))
    assert found is None or not found.owns(key)  # whatever Graph answers, nobody owns this address
    looked = [r for r in graph.requests if r["route"].startswith("graph.")]
    assert [r["route"] for r in looked] == ["graph.user", "graph.users"]  # by id, then by mail: never elsewhere
    escaped = key.replace("'", "''")
    for request in looked:
        if request["route"] == "graph.users":  # the literal stays one literal: quotes doubled
            expected = f"mail eq '{escaped}' or proxyAddresses/any(p:p eq 'smtp:{escaped}')"
            assert request["query"]["$filter"] == expected


# -- secrets in what the product shows ----------------------------------------------------------------------------

FUNCTION_KEY = "fk/Zm9vYmFy+key=="  # a function key's alphabet: base64, so it changes when URL-encoded


@pytest.mark.parametrize(
    "query",
    [
        f"code={FUNCTION_KEY}",
        f"Code={FUNCTION_KEY}",
        f"CODE={quote(FUNCTION_KEY, safe='')}",
        f"x=1&code={FUNCTION_KEY}",
    ],
    ids=["code", "Code", "CODE-url-encoded", "second-parameter"],
)
def test_the_cli_never_prints_the_webhooks_function_key(sim: Simulator, query: str) -> None:
    env = {"TENANT_ID": TENANT_ID, "O365_API_ROOT": sim.url, "O365_WEBHOOK_AUTH_ID": "auth-id-value",
           "IDENTITY_ENDPOINT": f"{sim.url}/msi/token", "IDENTITY_HEADER": sim.identity_header}  # fmt: skip
    done = cli("o365", "subscribe", "--webhook", f"{sim.url}/hook?{query}", env=env)
    assert "AF20021" in done.stderr  # the service echoed the address back
    shown = done.stdout + done.stderr
    for form in (FUNCTION_KEY, quote(FUNCTION_KEY, safe=""), quote_plus(FUNCTION_KEY), "Zm9vYmFy"):
        assert form not in shown


def test_repr_of_the_settings_shows_no_webhook_url_key() -> None:
    url = "https://prod-12.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=LogicAppKey123"
    settings = Settings.from_env({"TICKET_WEBHOOK_URL": url})
    assert "LogicAppKey123" not in repr(settings) + str(settings)
    assert settings.ticket_webhook_url is not None
    assert settings.ticket_webhook_url.reveal() == url


# -- log forging ---------------------------------------------------------------------------------------------


@pytest.fixture
def log_lines(debug_log: io.StringIO) -> Callable[[], list[str]]:
    """What a real handler on the root logger writes at DEBUG, as physical lines (the host's handler is one such)."""
    return lambda: physical_lines(debug_log.getvalue())


@pytest.mark.parametrize("separator", LINE_STARTERS)
def test_an_alert_id_with_a_line_break_cannot_forge_a_log_line(
    separator: str, log_lines: Callable[[], list[str]]
) -> None:
    world = World([], [])
    forged = f"a-1{separator}CRITICAL restricted_sender: unblocked ceo@contoso.com"
    world.intake.accept(json.dumps(alert_v2(alert_id=forged)).encode())  # names no user: logged as a warning
    lines = log_lines()
    assert any("names no user" in line for line in lines)
    assert all(line.startswith("LOG ") for line in lines)


def test_every_logger_of_the_package_cleans_its_messages() -> None:
    for module in (
        "entrypoints.cli",
        "entrypoints.compose",
        "entrypoints.edge",
        "processing.doctor",
        "entrypoints.auth",
    ):
        importlib.import_module(f"restricted_sender.{module}")  # between them, every module that logs

    # Stage folders (restricted_sender.core, ...) are placeholders in logging's tree: nothing logs to them.
    names = [
        n
        for n, logger in logging.root.manager.loggerDict.items()
        if (n == "restricted_sender" or n.startswith("restricted_sender.")) and isinstance(logger, logging.Logger)
    ]
    loggers = [logging.getLogger(n) for n in names]
    assert {"restricted_sender", "restricted_sender.decision"} <= set(names)
    assert all(LOG_FILTER in logger.filters for logger in loggers)


def test_the_threat_model_names_every_attack_in_this_file() -> None:
    model = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
    attacks = re.findall(r"^def (test_\w+)", Path(__file__).read_text(encoding="utf-8"), re.M)
    assert [name for name in attacks if name not in model and "threat_model" not in name] == []


# -- helpers ---------------------------------------------------------------------------------------------------


async def _with_http(use: Callable[[httpx.AsyncClient], Any]) -> Any:
    async with httpx.AsyncClient(timeout=5) as http:
        return await use(http)


def _adf_nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.get("content", []):
            yield from _adf_nodes(child)
