"""The deployment (azure.yaml, infra/, config/policy.yaml, .funcignore) against the code it deploys.

The code is the one list of app settings: Settings.from_env and function_app.py say what is read; infra/, the
local sample and the README must follow it, and nothing else may creep into infra/. checkov itself runs from
`make iac` in its own environment; these tests only read files.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from restricted_sender.core.policy import load_policy_file
from restricted_sender.settings import DEFENDER_EVENTHUB, Settings
from tests.conftest import ROOT

INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# Settings the Functions host and platform read (never the product's code) that the deployment must set:
# identity-based AzureWebJobsStorage, Entra-authenticated telemetry.
HOST_SETTINGS = {
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# The Event Hub trigger's identity-based connection, read by the host from the DEFENDER_EVENTHUB prefix.
EVENTHUB_CONNECTION = {f"{DEFENDER_EVENTHUB}__{key}" for key in ("fullyQualifiedNamespace", "credential", "clientId")}
# Read by the product, deliberately absent from the deployment: the connection-string form of storage (shared
# keys are off; the identity-based settings replace it).
NOT_DEPLOYED = {"AzureWebJobsStorage"}
# Absent from the local sample: it uses a connection string (Azurite) instead of the identity-based names, and
# sets SERVICENOW_USERNAME/SERVICENOW_PASSWORD rather than their alternative.
NOT_IN_LOCAL_SAMPLE_ALTERNATIVES = {"SERVICENOW_TOKEN"}


def settings_read_by_settings_module() -> dict[str, str]:
    """Name -> helper (text, secret, number, interval) for every setting Settings.from_env reads."""
    source = inspect.getsource(Settings.from_env)
    found = re.findall(r'\b(text|secret|number|interval)\("([A-Za-z0-9_]+)"', source)
    return {name: helper for helper, name in found}


def settings_read_by_function_app() -> set[str]:
    """The app settings function_app.py reads itself (today the Event Hub trigger's switch and consumer group)."""
    source = (ROOT / "function_app.py").read_text(encoding="utf-8")
    names = {DEFENDER_EVENTHUB + suffix for suffix in re.findall(r'f"\{DEFENDER_EVENTHUB\}(_[A-Z0-9_]+)"', source)}
    names |= set(re.findall(r'os\.environ(?:\.get\(|\[)"([A-Za-z0-9_]+)"', source))
    assert names, "function_app.py reads no app setting any more: check this test still finds them"
    return names


def settings_the_code_reads() -> set[str]:
    return set(settings_read_by_settings_module()) | settings_read_by_function_app()


APP_SETTING = re.compile(r"^\s*([A-Z][A-Z0-9_]*|AzureWebJobs\w+|DEFENDER_EVENTHUB__\w+):\s*(.+?)\s*$", re.M)
KEY_VAULT_REFERENCE = re.compile(r"'@Microsoft\.KeyVault\(SecretUri=\$\{secretUri\}\$\{secretNames\.(\w+)\}\)'")


def bicep_app_settings(text: str) -> dict[str, str]:
    """Every `Name: value` whose name looks like an app setting (upper case, or the AzureWebJobs prefix)."""
    return dict(APP_SETTING.findall(text))


def bicep_params(text: str) -> dict[str, bool]:
    """Parameter name -> whether it is @secure()."""
    lines = text.splitlines()
    params: dict[str, bool] = {}
    for index, line in enumerate(lines):
        match = re.match(r"param (\w+) ", line)
        if not match:
            continue
        decorators = []
        back = index - 1
        while back >= 0 and lines[back].strip() and not re.match(r"(param|var|resource|module|output) ", lines[back]):
            decorators.append(lines[back].strip())
            back -= 1
        params[match.group(1)] = "@secure()" in decorators
    return params


def bicep_outputs(text: str) -> dict[str, str]:
    return dict(re.findall(r"^output (\w+) \w+ = (.+)$", text, re.M))


def test_the_bicep_names_no_registry_module_only_local_files() -> None:
    assert BICEP_FILES
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"^\s*module \w+ '([^']+)'", text, re.M):
            assert not re.match(r"(br|ts)[:/]", target), f"{path.relative_to(ROOT)} uses a registry module: {target}"
            assert (path.parent / target).is_file(), f"{path.relative_to(ROOT)}: module {target} does not exist"
        assert not re.search(r"'(br|ts)[:/]", text), f"{path.relative_to(ROOT)} refers to a registry"


def test_every_app_setting_the_code_reads_is_deployed_and_in_the_local_sample_and_the_readme() -> None:
    read = settings_the_code_reads()
    deployed = set(bicep_app_settings(MAIN.read_text(encoding="utf-8")))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]

    assert read - NOT_DEPLOYED - deployed == set(), "read by the code but not set by infra/main.bicep"
    assert {name for name in read if f"`{name}`" not in readme} == set(), "read by the code but not in the README"
    identity_based = {name for name in read if "__" in name}  # the local sample uses a connection string
    assert read - identity_based - NOT_IN_LOCAL_SAMPLE_ALTERNATIVES - set(sample) == set(), "missing locally"


def test_the_deployment_sets_nothing_the_code_or_the_host_does_not_read() -> None:
    deployed = set(bicep_app_settings(MAIN.read_text(encoding="utf-8")))
    known = settings_the_code_reads() | HOST_SETTINGS | EVENTHUB_CONNECTION
    assert deployed - known == set(), "infra sets app settings nobody reads"
    assert HOST_SETTINGS - {"APPLICATIONINSIGHTS_CONNECTION_STRING"} <= deployed
    assert deployed >= EVENTHUB_CONNECTION
    # The telemetry connection string is read from the Application Insights resource inside the app module.
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in (INFRA / "app" / "function.bicep").read_text(encoding="utf-8")


def test_storage_is_identity_based_and_telemetry_is_entra_authenticated() -> None:
    settings = bicep_app_settings(MAIN.read_text(encoding="utf-8"))
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["AzureWebJobsStorage__clientId"] == "identity.outputs.clientId"
    assert settings["AZURE_CLIENT_ID"] == "identity.outputs.clientId"
    telemetry = settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert telemetry == "'ClientId=${identity.outputs.clientId};Authorization=AAD'"
    storage = (INFRA / "app" / "storage.bicep").read_text(encoding="utf-8")
    assert re.search(r"^\s*allowSharedKeyAccess: false$", storage, re.M)
    assert re.search(r"^\s*allowBlobPublicAccess: false$", storage, re.M)
    assert re.search(r"^\s*DisableLocalAuth: true$", (INFRA / "app" / "monitoring.bicep").read_text("utf-8"), re.M)


def test_every_secret_setting_is_a_key_vault_reference_to_a_secret_the_template_writes() -> None:
    main = MAIN.read_text(encoding="utf-8")
    secrets = {name for name, helper in settings_read_by_settings_module().items() if helper == "secret"}
    settings = bicep_app_settings(main)
    for name in secrets - NOT_DEPLOYED:
        reference = KEY_VAULT_REFERENCE.fullmatch(settings[name])
        assert reference, f"{name} is not a Key Vault reference: {settings[name]}"
        key = reference.group(1)
        # The vault module gets the parameter's value under that secret name...
        assert f"'${{secretNames.{key}}}': {key}" in main
        # ...and the setting exists only when the secret does: a reference to a missing secret would hand the
        # app the literal "@Microsoft.KeyVault(...)" text as the value.
        assert re.search(rf"^var {key}Setting = useSecret\.{key} \? \{{\n  {name}: ", main, re.M), name
    # Versionless URIs (nothing after the secret's name), so a rotated secret is picked up without a deployment.
    assert "var secretUri = 'https://${names.keyVault}${environment().suffixes.keyvaultDns}/secrets/'" in main
    assert NOT_DEPLOYED & set(settings) == set(), "a storage connection string would carry the account key"


def test_secure_parameters_never_reach_an_output_and_no_key_is_read() -> None:
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8")
        secure = {name for name, is_secure in bicep_params(text).items() if is_secure}
        for output, expression in bicep_outputs(text).items():
            for name in secure:
                assert not re.search(rf"\b{name}\b", expression), f"{path.name}: output {output} shows {name}"
            assert not re.search(r"listKeys|listSecrets|ConnectionString|InstrumentationKey", expression), (
                f"{path.name}: output {output} = {expression}"
            )
        assert "listKeys(" not in text, f"{path.name} reads an access key"


def test_the_secrets_are_secure_parameters_with_no_default() -> None:
    params = bicep_params(MAIN.read_text(encoding="utf-8"))
    expected = {
        "ticketWebhookUrl",
        "ticketWebhookSecret",
        "teamsWebhookUrl",
        "servicenowPassword",
        "servicenowToken",
        "jiraApiToken",
        "alertsSharedSecret",
    }
    expected |= {"o365WebhookAuthId"}
    assert {name for name, is_secure in params.items() if is_secure} == expected
    for name in expected:
        assert re.search(rf"^param {name} string = ''$", MAIN.read_text(encoding="utf-8"), re.M)


def test_the_outputs_are_names_ids_and_urls_for_the_permissions_script() -> None:
    outputs = bicep_outputs(MAIN.read_text(encoding="utf-8"))
    assert set(outputs) == {
        "AZURE_RESOURCE_GROUP",
        "FUNCTION_APP_NAME",
        "FUNCTION_APP_HOSTNAME",
        "IDENTITY_PRINCIPAL_ID",
        "IDENTITY_CLIENT_ID",
        "KEY_VAULT_NAME",
    }


def test_azd_deploys_the_workbook_reading_the_apps_application_insights() -> None:
    main = MAIN.read_text(encoding="utf-8")
    bicep = (INFRA / "app" / "workbook.bicep").read_text(encoding="utf-8")
    data = (INFRA / "app" / "workbook.json").read_text(encoding="utf-8")
    # main.bicep deploys it with the app, on the Application Insights resource the app writes to.
    module = re.search(r"^module workbook '\./app/workbook\.bicep' = \{\n(.*?)^\}$", main, re.M | re.S)
    assert module, "infra/main.bicep does not deploy infra/app/workbook.bicep"
    assert "  scope: rg\n" in module.group(1)
    assert "    appInsightsName: monitoring.outputs.appInsightsName\n" in module.group(1)
    assert re.search(r"^resource workbook 'Microsoft\.Insights/workbooks@[\d-]+' = \{$", bicep, re.M)
    existing = (
        r"^resource appInsights 'Microsoft\.Insights/components@[\d-]+' existing = \{\n  name: appInsightsName\n\}$"
    )
    assert re.search(existing, bicep, re.M)
    # A workbook's name is a GUID; a stable one, so a second `azd up` updates it instead of adding another.
    assert re.search(r"^  name: guid\(appInsights\.id, '[\w-]+'\)$", bicep, re.M)
    assert re.search(r"^  kind: 'shared'$", bicep, re.M)
    assert re.search(r"^    sourceId: appInsights\.id$", bicep, re.M)
    # Its content is the checked JSON file (tests/test_workbook.py), pointed at that resource when deployed.
    serialized = (
        "    serializedData: replace(loadTextContent('workbook.json'), '__APP_INSIGHTS_ID__', appInsights.id)\n"
    )
    assert serialized in bicep
    assert json.loads(data)["fallbackResourceIds"] == ["__APP_INSIGHTS_ID__"]
    assert data.count("__APP_INSIGHTS_ID__") == 1, "a query must not depend on the resource id"


def test_the_parameters_file_names_only_parameters_main_bicep_declares() -> None:
    declared = set(bicep_params(MAIN.read_text(encoding="utf-8")))
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) - declared == set()
    assert given["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert given["location"]["value"] == "${AZURE_LOCATION}"


def test_every_json_file_under_infra_parses() -> None:
    # checkov skips a JSON file it cannot parse without a word, so a broken template would pass its scan.
    for path in sorted(INFRA.rglob("*.json")):
        json.loads(path.read_text(encoding="utf-8"))


def test_the_app_runs_the_python_the_product_is_tested_with() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    tested = re.search(r'^python_version = "(\d+\.\d+)"$', pyproject, re.M)
    assert tested
    assert f"var pythonVersion = '{tested.group(1)}'" in MAIN.read_text(encoding="utf-8")


def test_azd_deploys_the_repository_root_as_the_python_function_app() -> None:
    project = yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert project["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert project["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    # azd finds the app to deploy to by this tag.
    assert "'azd-service-name': 'api'" in (INFRA / "app" / "function.bicep").read_text(encoding="utf-8")


def test_the_shipped_policy_loads_and_starts_in_report_only() -> None:
    policy = load_policy_file(ROOT / "config" / "policy.yaml")
    assert policy.mode == "report-only"
    assert not policy.enforce
    assert policy.alert_names == ("User restricted from sending email",)
    assert policy.allow == ()
    assert not policy.containment.any
    assert "param policyFile string = 'config/policy.yaml'" in MAIN.read_text(encoding="utf-8")


def funcignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    return any(fnmatch.fnmatch(part, pattern.strip("/")) for part in parts for pattern in patterns)


@pytest.mark.parametrize("path", ["config/policy.yaml", "function_app.py", "host.json", "requirements.txt"])
def test_the_package_ships(path: str) -> None:
    assert (ROOT / path).exists()
    assert not funcignored(path)


@pytest.mark.parametrize(
    "path", ["infra/main.bicep", "scripts/x.py", "docs/x.md", "tests/test_infra.py", ".tools/checkov", ".azure/env"]
)
def test_the_package_leaves_out(path: str) -> None:
    assert funcignored(path)


def test_the_shipped_policy_is_found_whatever_directory_the_worker_starts_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from restricted_sender.core.policy import Policy
    from restricted_sender.entrypoints.compose import load_policy

    monkeypatch.chdir(tmp_path)
    policy = load_policy(Settings(policy_file="config/policy.yaml"))
    assert isinstance(policy, Policy)
    assert policy.mode == "report-only"


def test_an_unresolved_key_vault_reference_is_refused_not_used_as_the_secret() -> None:
    from restricted_sender.errors import ConfigurationError

    reference = "@Microsoft.KeyVault(SecretUri=https://kv-rsr.vault.azure.net/secrets/alerts-shared-secret/)"
    with pytest.raises(ConfigurationError, match="ALERTS_SHARED_SECRET is a Key Vault reference that did not resolve"):
        Settings.from_env({"ALERTS_SHARED_SECRET": reference})
