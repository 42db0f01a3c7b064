"""The published JSON Schema of the policy file: shipped as printed, valid, and in step with the loader."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml

from restricted_sender.core.policy import parse_policy
from restricted_sender.core.policy_schema import POLICY_SCHEMA
from restricted_sender.errors import PolicyError
from tests.conftest import DESIGN_POLICY_EXAMPLE, ROOT

VALIDATOR = jsonschema.Draft202012Validator(POLICY_SCHEMA)


def test_the_shipped_schema_file_is_exactly_what_the_cli_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "restricted_sender", "policy", "schema"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert json.loads(printed) == json.loads((ROOT / "policy.schema.json").read_text()) == POLICY_SCHEMA


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(POLICY_SCHEMA)


@pytest.mark.parametrize(
    "policy",
    [
        {},
        yaml.safe_load(DESIGN_POLICY_EXAMPLE),
        yaml.safe_load((ROOT / "samples" / "policy.yaml").read_text()),
        {"allow": [{"name": "subs", "domains": ["*.contoso.com"]}], "deny": {"groups": ["g"]}},
        {"ticket": {"system": "servicenow", "servicenow": {"table": "sn_si_incident", "fields": {"category": "x"}}}},
        {"ticket": {"system": "jira", "jira": {"project": "SEC", "issue_type": "Bug", "labels": ["m365"]}}},
        {"ticket": {"system": "email", "email": {"sender": "rsr@contoso.com", "to": ["soc@contoso.com"]}}},
        {"notify": {"user": True, "recipients": ["help@contoso.com"], "sender": "rsr@contoso.com"}},
        {"containment": {"revoke_sessions": True, "confirm_compromised": True, "disable_account": True}},
    ],
    ids=[
        "empty",
        "the design example",
        "the sample policy",
        "subdomains",
        "servicenow",
        "jira",
        "email",
        "notify",
        "containment",
    ],
)
def test_good_policies_pass_both_the_schema_and_the_loader(policy: dict[str, Any]) -> None:
    assert list(VALIDATOR.iter_errors(policy)) == []
    parse_policy(policy)


@pytest.mark.parametrize(
    "policy",
    [
        {"bogus": 1},
        {"mode": "enforced"},
        {"guards": {"max_risk_level": "meduim"}},
        {"guards": {"max_unblocks_per_user": {"count": -1, "days": 7}}},
        {"guards": {"max_unblocks_per_user": {"count": 1}}},
        {"guards": {"max_unblocks_per_tenant": {"count": 1, "hours": 0}}},
        {"guards": {"account_enabled": "yes"}},
        {"allow": [{"users": ["a@b.c"]}]},
        {"allow": [{"name": "nobody"}]},
        {"allow": [{"name": "x", "domains": ["@contoso.com"]}]},
        {"allow": [{"name": "x", "users": ["a@b.c"], "teams": ["t"]}]},
        {"deny": {"users": "a@b.c"}},
        {"ticket": {"system": "pagerduty"}},
        {"notify": {"recipients": [""]}},
        {"notify": {"user": True}},
        {"notify": {"recipients": ["help@contoso.com"]}},
        {"notify": {"recipients": ["helpdesk"], "sender": "rsr@contoso.com"}},
        {"ticket": {"system": "jira"}},
        {"ticket": {"system": "jira", "jira": {"project": "security team"}}},
        {"ticket": {"system": "jira", "jira": {"project": "SEC", "labels": ["two words"]}}},
        {"ticket": {"system": "email", "email": {"sender": "rsr@contoso.com"}}},
        {"ticket": {"servicenow": {"table": "Incident; drop"}}},
        {"ticket": {"servicenow": {"fields": {"impact": 1}}}},
        {"ticket": {"webhook": {"url": "https://x"}}},
    ],
    ids=[
        "unknown key", "mode typo", "risk typo", "negative budget", "budget without window", "zero window",
        "not a boolean", "rule without name", "rule naming nobody", "address as domain", "unknown rule key",
        "deny users not a list", "unknown ticket system", "empty recipient", "user notice without sender",
        "recipients without sender", "recipient not a mailbox", "jira without project", "jira project not a key",
        "jira label with a space", "email without recipients", "servicenow table not a name",
        "servicenow field not a string", "webhook url in the policy (it is a setting)",
    ],
)  # fmt: skip
def test_mistakes_fail_both_the_schema_and_the_loader(policy: dict[str, Any]) -> None:
    assert list(VALIDATOR.iter_errors(policy)) != []
    with pytest.raises(PolicyError):
        parse_policy(policy)


@pytest.mark.parametrize(
    "guards",
    [
        {"max_unblocks_per_user": {"count": 1, "days": 1_000_000}},
        {"max_unblocks_per_tenant": {"count": 1, "hours": 10**9}},
        {"max_unblocks_per_tenant": {"count": 1, "hours": 721}},
        {"min_hours_to_auto_release": 25},
    ],
    ids=[
        "a budget window of millennia",
        "a circuit-breaker window of millennia",
        "a circuit-breaker window past the 30 days the store keeps",
        "waiting longer than a day block",
    ],
)
def test_numbers_beyond_any_sensible_range_are_refused_by_both(guards: dict[str, Any]) -> None:
    assert list(VALIDATOR.iter_errors({"guards": guards})) != []
    with pytest.raises(PolicyError, match="expected a number from 0 to"):
        parse_policy({"guards": guards})


def _defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """A policy that writes out every default the schema states, section by section."""
    found: dict[str, Any] = {}
    for key, prop in schema.get("properties", {}).items():
        if "default" in prop:
            found[key] = prop["default"]
        elif prop.get("type") == "object" and (inner := _defaults(prop)):
            found[key] = inner
    return found


def test_writing_out_every_default_the_schema_states_loads_the_empty_policy() -> None:
    written = _defaults(POLICY_SCHEMA)
    assert {"mode", "alert_names", "guards", "containment", "notify", "ticket"} <= set(written)
    assert parse_policy(written) == parse_policy({})
