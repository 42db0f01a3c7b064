"""The Sentinel playbook template (infra/sentinel/playbook.json): pure JSON checks, no Azure."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

import pytest

from restricted_sender.core.policy import DEFAULT_ALERT_NAMES
from tests.conftest import ROOT

TEMPLATE_PATH = ROOT / "infra" / "sentinel" / "playbook.json"
TEMPLATE: dict[str, Any] = json.loads(TEMPLATE_PATH.read_text(encoding="utf-8"))

ROLE_SENTINEL_RESPONDER = "3e150937-b8fe-4cfb-8069-0eaf05ecd056"
ROLE_SENTINEL_AUTOMATION_CONTRIBUTOR = "f4c81013-99ee-4d62-a7ee-b3f1f648599a"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
SECRET_LIKE_NAME = re.compile(r"(password|secret|token|key|credential)s?$", re.IGNORECASE)
KEY_READING_ARM_FUNCTIONS = re.compile(r"\blist(Keys|Secrets|CallbackUrl|AccountSas|ServiceSas)?\s*\(", re.IGNORECASE)


def resources_of_type(kind: str, resources: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [r for r in (TEMPLATE["resources"] if resources is None else resources) if r["type"] == kind]


def the_one(kind: str) -> dict[str, Any]:
    found = resources_of_type(kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


WORKFLOW = the_one("Microsoft.Logic/workflows")
DEFINITION: dict[str, Any] = WORKFLOW["properties"]["definition"]
ACTIONS: dict[str, Any] = DEFINITION["actions"]
GET_SECRET = ACTIONS["Get_secret"]
HTTP_ACTIONS = {name: action for name, action in ACTIONS.items() if action["type"] == "Http"}
AUTOMATION_RULE = the_one("Microsoft.SecurityInsights/automationRules")


def secured(action: dict[str, Any]) -> set[str]:
    return set(action.get("runtimeConfiguration", {}).get("secureData", {}).get("properties", []))


def resolved(expression: Any) -> Any:
    """A whole-string ``[variables('x')]`` replaced by the variable's value; anything else as it is."""
    match = re.fullmatch(r"\[variables\('(\w+)'\)\]", expression) if isinstance(expression, str) else None
    return TEMPLATE["variables"][match.group(1)] if match else expression


def role_assignments_anywhere() -> list[dict[str, Any]]:
    """Role assignments at the top level and inside nested deployments."""
    found = resources_of_type("Microsoft.Authorization/roleAssignments")
    for deployment in resources_of_type("Microsoft.Resources/deployments"):
        found += resources_of_type(
            "Microsoft.Authorization/roleAssignments", deployment["properties"]["template"]["resources"]
        )
    return found


def role_guid(assignment: dict[str, Any]) -> str:
    """The built-in role's GUID, whether written inline or through a variable / inner parameter."""
    text = assignment["properties"]["roleDefinitionId"]
    for name, value in TEMPLATE["variables"].items():
        text = text.replace(f"variables('{name}')", f"'{value}'")
    for deployment in resources_of_type("Microsoft.Resources/deployments"):
        for name, given in deployment["properties"].get("parameters", {}).items():
            value = str(given.get("value", ""))
            for var, var_value in TEMPLATE["variables"].items():
                value = value.replace(f"[variables('{var}')]", str(var_value))
            text = text.replace(f"parameters('{name}')", f"'{value}'")
    match = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text)
    assert match, text
    return match.group(0)


def test_the_template_is_an_arm_deployment_template() -> None:
    assert TEMPLATE["$schema"] == "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
    assert TEMPLATE["contentVersion"] == "1.0.0.0"
    assert DEFINITION["$schema"].endswith("/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#")


def test_the_playbook_is_a_consumption_logic_app_with_a_system_assigned_identity() -> None:
    assert WORKFLOW["identity"] == {"type": "SystemAssigned"}
    assert "kind" not in WORKFLOW, "a Standard logic app is a Microsoft.Web/sites resource, not a workflow"
    assert WORKFLOW["properties"]["state"] == "Enabled"


def test_the_playbook_starts_on_a_microsoft_sentinel_incident() -> None:
    (trigger,) = DEFINITION["triggers"].values()
    assert trigger["type"] == "ApiConnectionWebhook"
    assert trigger["inputs"]["path"] == "/incident-creation"
    assert trigger["inputs"]["body"] == {"callback_url": "@{listCallbackUrl()}"}
    assert "['azuresentinel']" in trigger["inputs"]["host"]["connection"]["name"]


def test_get_secret_reads_the_function_key_secret_through_the_key_vault_connection() -> None:
    assert GET_SECRET["type"] == "ApiConnection"
    assert GET_SECRET["runAfter"] == {}
    assert GET_SECRET["inputs"]["method"] == "get"
    assert "['keyvault']" in GET_SECRET["inputs"]["host"]["connection"]["name"]
    assert GET_SECRET["inputs"]["path"] == "/secrets/@{encodeURIComponent(parameters('functionKeySecretName'))}/value"
    assert TEMPLATE["parameters"]["functionKeySecretName"]["defaultValue"] == "responder-function-key"


def test_get_secret_hides_its_inputs_and_outputs_from_run_history() -> None:
    assert secured(GET_SECRET) == {"inputs", "outputs"}


def test_one_http_action_posts_the_incident_body_to_api_alerts_after_get_secret() -> None:
    (http,) = HTTP_ACTIONS.values()
    inputs = http["inputs"]
    assert inputs["method"] == "POST"
    assert inputs["uri"] == "https://@{parameters('functionAppHostName')}/api/alerts"
    assert inputs["body"] == "@triggerBody()"
    assert http["runAfter"] == {"Get_secret": ["Succeeded"]}
    assert not [name for name, action in ACTIONS.items() if action["type"] == "Function"], (
        "the Azure Functions action does not support Python apps"
    )


def test_the_http_action_sends_the_key_from_get_secret_as_x_functions_key_and_json() -> None:
    (http,) = HTTP_ACTIONS.values()
    headers = {name.lower(): value for name, value in http["inputs"]["headers"].items()}
    assert headers["x-functions-key"] == "@{body('Get_secret')?['value']}"
    assert headers["content-type"] == "application/json"


def test_the_http_action_hides_its_inputs_because_they_carry_the_key() -> None:
    (http,) = HTTP_ACTIONS.values()
    assert "inputs" in secured(http)


def test_every_action_that_uses_the_secret_hides_its_inputs() -> None:
    users = [name for name, action in ACTIONS.items() if "body('Get_secret')" in json.dumps(action.get("inputs"))]
    assert users, "the secret is sent nowhere"
    assert all("inputs" in secured(ACTIONS[name]) for name in users), users


def test_a_503_from_the_function_is_retried_with_exponential_backoff_a_few_times() -> None:
    (http,) = HTTP_ACTIONS.values()
    policy = http["inputs"]["retryPolicy"]
    assert policy["type"] == "exponential"
    assert 2 <= policy["count"] <= 10
    for field in ("interval", "minimumInterval", "maximumInterval"):
        assert re.fullmatch(r"PT\d+[SM]", policy[field]), field
    # The function's 202 is final: the HTTP action must not wait for a Location header to poll.
    assert http["operationOptions"] == "DisableAsyncPattern"


def test_every_workflow_parameter_the_definition_uses_is_declared_and_given_a_value() -> None:
    used = set(re.findall(r"parameters\('([^']+)'\)", json.dumps(DEFINITION)))
    declared = set(DEFINITION["parameters"])
    given = set(WORKFLOW["properties"]["parameters"])
    assert used <= declared, used - declared
    assert declared - {"$connections"} <= given, declared - given
    assert "$connections" in given


def test_both_connections_sign_in_with_the_playbooks_managed_identity() -> None:
    connections = resources_of_type("Microsoft.Web/connections")
    for connection in connections:
        assert connection["kind"] == "V1"
        assert connection["properties"]["parameterValueType"] == "Alternative"
    by_api = {resolved(c["properties"]["api"]["id"]).rsplit("'", 2)[-2]: c for c in connections}
    assert sorted(by_api) == ["azuresentinel", "keyvault"]
    assert by_api["keyvault"]["properties"]["alternativeParameterValues"] == {
        "vaultName": "[parameters('keyVaultName')]"
    }
    wiring = WORKFLOW["properties"]["parameters"]["$connections"]["value"]
    assert sorted(wiring) == ["azuresentinel", "keyvault"]
    for api, connection in by_api.items():
        assert wiring[api]["connectionProperties"] == {"authentication": {"type": "ManagedServiceIdentity"}}
        assert resolved(wiring[api]["id"]) == resolved(connection["properties"]["api"]["id"])
        assert resolved(wiring[api]["connectionName"]) == resolved(connection["name"])


def test_the_playbook_identity_gets_sentinel_responder_on_the_workspace() -> None:
    (assignment,) = [a for a in role_assignments_anywhere() if role_guid(a) == ROLE_SENTINEL_RESPONDER]
    assert assignment["scope"] == "[variables('workspaceScope')]"
    assert "Microsoft.OperationalInsights/workspaces/{0}" in TEMPLATE["variables"]["workspaceScope"]
    assert ".identity.principalId" in assignment["properties"]["principalId"]
    assert assignment["properties"]["principalType"] == "ServicePrincipal"


def test_the_playbook_identity_gets_key_vault_secrets_user_on_the_vault_in_its_own_resource_group() -> None:
    (deployment,) = resources_of_type("Microsoft.Resources/deployments")
    assert deployment["resourceGroup"] == "[parameters('keyVaultResourceGroup')]"
    assert TEMPLATE["parameters"]["keyVaultResourceGroup"]["defaultValue"] == "[resourceGroup().name]"
    (assignment,) = [a for a in role_assignments_anywhere() if role_guid(a) == ROLE_KEY_VAULT_SECRETS_USER]
    assert assignment["scope"] == "[format('Microsoft.KeyVault/vaults/{0}', parameters('keyVaultName'))]"
    assert ".identity.principalId" in deployment["properties"]["parameters"]["principalId"]["value"]


def test_sentinel_gets_automation_contributor_on_this_resource_group_only_when_its_principal_is_given() -> None:
    (assignment,) = [a for a in role_assignments_anywhere() if role_guid(a) == ROLE_SENTINEL_AUTOMATION_CONTRIBUTOR]
    assert "scope" not in assignment, "resource-group scope"
    assert assignment["condition"] == "[not(empty(parameters('sentinelAutomationPrincipalId')))]"
    assert assignment["properties"]["principalId"] == "[parameters('sentinelAutomationPrincipalId')]"


def test_the_automation_rule_runs_this_playbook_when_an_incident_is_created() -> None:
    assert AUTOMATION_RULE["scope"] == "[variables('workspaceScope')]"
    properties = AUTOMATION_RULE["properties"]
    logic = properties["triggeringLogic"]
    assert (logic["triggersOn"], logic["triggersWhen"], logic["isEnabled"]) == ("Incidents", "Created", True)
    (action,) = properties["actions"]
    assert action["actionType"] == "RunPlaybook"
    assert action["actionConfiguration"] == {
        "logicAppResourceId": "[variables('playbookId')]",
        "tenantId": "[subscription().tenantId]",
    }
    assert (
        TEMPLATE["variables"]["playbookId"] == "[resourceId('Microsoft.Logic/workflows', parameters('playbookName'))]"
    )
    assert properties["order"] == "[parameters('automationRuleOrder')]"
    order = TEMPLATE["parameters"]["automationRuleOrder"]
    assert (order["minValue"], order["maxValue"]) == (1, 1000)
    assert "[variables('playbookId')]" in AUTOMATION_RULE["dependsOn"]


def test_the_automation_rule_needs_defender_for_office_365_and_the_alert_title() -> None:
    conditions = AUTOMATION_RULE["properties"]["triggeringLogic"]["conditions"]
    by_property = {c["conditionProperties"]["propertyName"]: c for c in conditions}
    assert set(by_property) == {"AlertProductNames", "IncidentTitle"}
    assert all(c["conditionType"] == "Property" for c in conditions)
    assert all(c["conditionProperties"]["operator"] == "Contains" for c in conditions)
    products = resolved(by_property["AlertProductNames"]["conditionProperties"]["propertyValues"])
    assert "Microsoft Defender for Office 365" in products
    (title,) = by_property["IncidentTitle"]["conditionProperties"]["propertyValues"]
    assert resolved(title) in DEFAULT_ALERT_NAMES


def test_the_automation_rule_name_is_a_stable_guid() -> None:
    assert AUTOMATION_RULE["name"] == "[variables('automationRuleName')]"
    assert TEMPLATE["variables"]["automationRuleName"].startswith("[guid(")


@pytest.mark.parametrize("name", sorted(TEMPLATE["parameters"]))
def test_no_parameter_that_holds_a_secret_has_a_default_value(name: str) -> None:
    parameter = TEMPLATE["parameters"][name]
    if parameter["type"].lower() in {"securestring", "secureobject"} or SECRET_LIKE_NAME.search(name):
        assert "defaultValue" not in parameter


def test_the_function_key_never_passes_through_the_template() -> None:
    assert not [n for n, p in TEMPLATE["parameters"].items() if p["type"].lower() in {"securestring", "secureobject"}]
    arm_expressions = [
        s for s in re.findall(r'"(\[[^"]*\])"', TEMPLATE_PATH.read_text(encoding="utf-8")) if not s.startswith("[[")
    ]
    assert not [e for e in arm_expressions if KEY_READING_ARM_FUNCTIONS.search(e)]


def test_no_output_exposes_a_secret_or_a_key() -> None:
    outputs = TEMPLATE["outputs"]
    assert set(outputs) == {"logicAppName", "logicAppResourceId", "logicAppPrincipalId"}
    for name, output in outputs.items():
        assert output["type"] == "string", name
        value = output["value"]
        assert not KEY_READING_ARM_FUNCTIONS.search(value), name
        assert "Microsoft.Web/connections" not in value, name
        assert "Get_secret" not in value, name
        assert not SECRET_LIKE_NAME.search(name), name


def test_the_deploy_button_opens_this_template_in_the_portal() -> None:
    readme = (TEMPLATE_PATH.parent / "README.md").read_text(encoding="utf-8")
    (link,) = re.findall(r"\(https://portal\.azure\.com/#create/Microsoft\.Template/uri/([^)\s]+)\)", readme)
    raw = urllib.parse.unquote(link)
    assert raw.startswith("https://raw.githubusercontent.com/<your-fork>/")
    assert raw.endswith("/main/infra/sentinel/playbook.json")
    assert urllib.parse.quote(raw, safe="") == link
    assert "[![Deploy to Azure](https://aka.ms/deploytoazurebutton)]" in readme
