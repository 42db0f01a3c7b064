// Restricted Sender Responder on Azure Functions Flex Consumption, for `azd up`.
// Plain resource declarations in local modules only (no registry modules): it builds and scans offline.
// Every app setting the product reads is set here, from a parameter or from the resources themselves.
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------------------
// Where
// ---------------------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('azd environment name: part of every resource name, and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
param location string

@description('Resource group to create or update. Empty: rg-<environmentName>.')
param resourceGroupName string = ''

// ---------------------------------------------------------------------------------------------------------
// Scale and retention
// ---------------------------------------------------------------------------------------------------------

@minValue(40)
@maxValue(1000)
@description('Most instances the app scales out to (40 is the lowest Flex Consumption allows). All of them call Graph and Exchange for one tenant, so more buy throttling rather than speed.')
param maximumInstanceCount int = 40

// 512 MB: the processor's peak RSS under bench/burst.py (1,000 alerts at once, 16 at a time, faults on) is about
// 150 MB, well inside it, and a 2048 MB instance costs four times as much per second. Flex Consumption documents 512
// (https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#instance-memory); an earlier note here
// said Microsoft.Web/sites@2024-04-01 refused it: a region or API version that does can deploy with 2048.
@allowed([
  512
  2048
  4096
])
@description('Memory of each instance, MB.')
param instanceMemoryMB int = 512

@minValue(30)
@maxValue(730)
@description('Days the Log Analytics workspace keeps logs and Application Insights telemetry.')
param logRetentionDays int = 90

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Replication of the storage account (host state, queues, the audit table).')
param storageSku string = 'Standard_LRS'

// ---------------------------------------------------------------------------------------------------------
// Key Vault
// ---------------------------------------------------------------------------------------------------------

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the vault. Flex Consumption resolves Key Vault references only from a vault without network restrictions: Disabled breaks every secret app setting.')
param keyVaultPublicNetworkAccess string = 'Enabled'

@description('Object id of a user or group allowed to set secrets in the vault by hand (Key Vault Secrets Officer), e.g. for the Sentinel playbook\'s function key. Empty: nobody.')
param secretsOfficerPrincipalId string = ''

@description('Names of secrets you put in the vault yourself instead of passing them below (ticket-webhook-url, ticket-webhook-secret, teams-webhook-url, servicenow-password, servicenow-token, jira-api-token, alerts-shared-secret, o365-webhook-auth-id); their app settings reference them anyway.')
param secretsInVault array = []

// Secrets: written to the vault when given (never to an app setting or an output); each app setting then
// holds a Key Vault reference. Empty and not in secretsInVault: the setting is left out (the feature is off).

// A Logic App, Power Automate or Teams webhook URL carries its key in the query (sig=...): the URL is a secret.
@secure()
@description('TICKET_WEBHOOK_URL: where webhook tickets are POSTed (its query string usually holds the key).')
param ticketWebhookUrl string = ''

@secure()
@description('TICKET_WEBHOOK_SECRET: HMAC key for the ticket webhook\'s X-Signature.')
param ticketWebhookSecret string = ''

@secure()
@description('TEAMS_WEBHOOK_URL: the Teams channel\'s Workflows webhook ("When a Teams webhook request is received"); its sig= is the key.')
param teamsWebhookUrl string = ''

@secure()
@description('SERVICENOW_PASSWORD: password of SERVICENOW_USERNAME.')
param servicenowPassword string = ''

@secure()
@description('SERVICENOW_TOKEN: OAuth bearer token, instead of a user and password.')
param servicenowToken string = ''

@secure()
@description('JIRA_API_TOKEN: API token of JIRA_EMAIL.')
param jiraApiToken string = ''

@secure()
@description('ALERTS_SHARED_SECRET: when set, POST /api/alerts also requires X-Webhook-Secret.')
param alertsSharedSecret string = ''

@secure()
@description('O365_WEBHOOK_AUTH_ID: the Management Activity subscription\'s authId; POST /api/alerts/o365 answers 404 without it.')
param o365WebhookAuthId string = ''

// ---------------------------------------------------------------------------------------------------------
// Product settings (README "App settings"); an empty string means the product's own default.
// ---------------------------------------------------------------------------------------------------------

@description('TENANT_ID: the Microsoft 365 tenant the app acts on. It must be this subscription\'s tenant (the default): the managed identity signs in nowhere else.')
param tenantId string = subscription().tenantId

@description('POLICY_FILE: the policy, relative to the app root. The shipped file starts in report-only.')
param policyFile string = 'config/policy.yaml'

@description('POLICY_YAML: inline policy YAML; when set it wins over POLICY_FILE.')
param policyYaml string = ''

@description('SERVICENOW_INSTANCE_URL, e.g. https://contoso.service-now.com.')
param servicenowInstanceUrl string = ''

@description('SERVICENOW_USERNAME: the integration user (with SERVICENOW_PASSWORD).')
param servicenowUsername string = ''

@description('JIRA_SITE_URL, e.g. https://contoso.atlassian.net.')
param jiraSiteUrl string = ''

@description('JIRA_EMAIL: the Jira service account (with JIRA_API_TOKEN).')
param jiraEmail string = ''

@description('ADMIN_API_AUDIENCE: the admin API app\'s Application ID URI and/or client id, comma-separated. Empty: the admin API answers with a configuration error.')
param adminApiAudience string = ''

@description('GRAPH_BASE_URL (national clouds).')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('EXCHANGE_BASE_URL (national clouds).')
param exchangeBaseUrl string = 'https://outlook.office365.com'

@description('ENTRA_AUTHORITY: where Entra ID publishes the signing keys of admin tokens (national clouds).')
param entraAuthority string = 'https://login.microsoftonline.com'

@description('O365_API_ROOT: the Management Activity API (GCC https://manage-gcc.office.com, GCC High https://manage.office365.us).')
param o365ApiRoot string = 'https://manage.office.com'

@description('O365_PUBLISHER_ID: PublisherIdentifier for Management Activity calls. Empty: TENANT_ID.')
param o365PublisherId string = ''

@description('TABLE_PREFIX: prefix of the product\'s tables (letters and digits, starting with a letter).')
param tablePrefix string = 'rsr'

@minValue(1)
@maxValue(600)
@description('HTTP_TIMEOUT_SECONDS: per-request timeout for Exchange, Graph and tickets.')
param httpTimeoutSeconds int = 30

@minValue(1)
@maxValue(540)
@description('EXCHANGE_TIMEOUT_SECONDS: how long one Exchange admin call may take (cmdlets may run 15 minutes server-side); below the function timeout of 10 minutes.')
param exchangeTimeoutSeconds int = 300

@minValue(1)
@maxValue(1440)
@description('VERIFY_AFTER: minutes from an unblock to its first check.')
param verifyAfterMinutes int = 60

@minValue(0)
@maxValue(1440)
@description('POLL_ALERTS_MINUTES: alerts_v2 poller interval; 0 turns it off.')
param pollAlertsMinutes int = 5

@minValue(0)
@maxValue(1440)
@description('SWEEP_MINUTES: restricted-list sweep interval; 0 turns it off.')
param sweepMinutes int = 5

// Defender XDR streaming (optional): both names given -> the Event Hub trigger is on and the identity may read.

@description('Event Hubs namespace the Defender XDR streaming API writes to (name only). Empty: no Event Hub trigger.')
param defenderEventHubNamespace string = ''

@description('DEFENDER_EVENTHUB_NAME: the Event Hub in that namespace.')
param defenderEventHubName string = ''

@description('Resource group of that namespace, in this subscription. Empty: the app\'s resource group.')
param defenderEventHubResourceGroup string = ''

@description('DEFENDER_EVENTHUB_CONSUMER_GROUP.')
param defenderEventHubConsumerGroup string = '$Default'

// ---------------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------------

// The product is developed and tested on Python 3.11 (Makefile, mypy, CI); Flex Consumption runs 3.10-3.12 GA.
var pythonVersion = '3.11'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'restricted-sender-responder'
}
var names = {
  resourceGroup: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  identity: 'id-rsr-${resourceToken}'
  workspace: 'log-rsr-${resourceToken}'
  appInsights: 'appi-rsr-${resourceToken}'
  storage: 'strsr${resourceToken}'
  keyVault: 'kv-rsr-${resourceToken}'
  plan: 'plan-rsr-${resourceToken}'
  functionApp: 'func-rsr-${resourceToken}'
  deploymentContainer: 'app-package'
}

// ---------------------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------------------

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity './app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module monitoring './app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    workspaceName: names.workspace
    appInsightsName: names.appInsights
    location: location
    tags: tags
    retentionInDays: logRetentionDays
    publisherPrincipalId: identity.outputs.principalId
  }
}

// The dashboard: a workbook over the app's Application Insights (README "Dashboard").
module workbook './app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    appInsightsName: monitoring.outputs.appInsightsName
    location: location
    tags: tags
  }
}

module storage './app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: names.storage
    location: location
    tags: tags
    deploymentContainerName: names.deploymentContainer
    skuName: storageSku
    appPrincipalId: identity.outputs.principalId
  }
}

// Vault secret names; an app setting refers to a secret only when it is given or declared in secretsInVault.
var secretNames = {
  ticketWebhookUrl: 'ticket-webhook-url'
  ticketWebhookSecret: 'ticket-webhook-secret'
  teamsWebhookUrl: 'teams-webhook-url'
  servicenowPassword: 'servicenow-password'
  servicenowToken: 'servicenow-token'
  jiraApiToken: 'jira-api-token'
  alertsSharedSecret: 'alerts-shared-secret'
  o365WebhookAuthId: 'o365-webhook-auth-id'
}

module keyVault './app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: names.keyVault
    location: location
    tags: tags
    publicNetworkAccess: keyVaultPublicNetworkAccess
    readerPrincipalId: identity.outputs.principalId
    officerPrincipalId: secretsOfficerPrincipalId
    secrets: {
      '${secretNames.ticketWebhookUrl}': ticketWebhookUrl
      '${secretNames.ticketWebhookSecret}': ticketWebhookSecret
      '${secretNames.teamsWebhookUrl}': teamsWebhookUrl
      '${secretNames.servicenowPassword}': servicenowPassword
      '${secretNames.servicenowToken}': servicenowToken
      '${secretNames.jiraApiToken}': jiraApiToken
      '${secretNames.alertsSharedSecret}': alertsSharedSecret
      '${secretNames.o365WebhookAuthId}': o365WebhookAuthId
    }
  }
}

// Versionless secret URIs: the app follows a rotated secret without a redeploy.
var secretUri = 'https://${names.keyVault}${environment().suffixes.keyvaultDns}/secrets/'

var useSecret = {
  ticketWebhookUrl: !empty(ticketWebhookUrl) || contains(secretsInVault, secretNames.ticketWebhookUrl)
  ticketWebhookSecret: !empty(ticketWebhookSecret) || contains(secretsInVault, secretNames.ticketWebhookSecret)
  teamsWebhookUrl: !empty(teamsWebhookUrl) || contains(secretsInVault, secretNames.teamsWebhookUrl)
  servicenowPassword: !empty(servicenowPassword) || contains(secretsInVault, secretNames.servicenowPassword)
  servicenowToken: !empty(servicenowToken) || contains(secretsInVault, secretNames.servicenowToken)
  jiraApiToken: !empty(jiraApiToken) || contains(secretsInVault, secretNames.jiraApiToken)
  alertsSharedSecret: !empty(alertsSharedSecret) || contains(secretsInVault, secretNames.alertsSharedSecret)
  o365WebhookAuthId: !empty(o365WebhookAuthId) || contains(secretsInVault, secretNames.o365WebhookAuthId)
}

// A reference to a secret that does not exist would hand the app the literal "@Microsoft.KeyVault(...)" text as
// the value (ALERTS_SHARED_SECRET would then demand that text), so a setting appears only with its secret.
var ticketWebhookUrlSetting = useSecret.ticketWebhookUrl ? {
  TICKET_WEBHOOK_URL: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.ticketWebhookUrl})'
} : {}
var ticketWebhookSecretSetting = useSecret.ticketWebhookSecret ? {
  TICKET_WEBHOOK_SECRET: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.ticketWebhookSecret})'
} : {}
var teamsWebhookUrlSetting = useSecret.teamsWebhookUrl ? {
  TEAMS_WEBHOOK_URL: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.teamsWebhookUrl})'
} : {}
var servicenowPasswordSetting = useSecret.servicenowPassword ? {
  SERVICENOW_PASSWORD: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.servicenowPassword})'
} : {}
var servicenowTokenSetting = useSecret.servicenowToken ? {
  SERVICENOW_TOKEN: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.servicenowToken})'
} : {}
var jiraApiTokenSetting = useSecret.jiraApiToken ? {
  JIRA_API_TOKEN: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.jiraApiToken})'
} : {}
var alertsSharedSecretSetting = useSecret.alertsSharedSecret ? {
  ALERTS_SHARED_SECRET: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.alertsSharedSecret})'
} : {}
var o365WebhookAuthIdSetting = useSecret.o365WebhookAuthId ? {
  O365_WEBHOOK_AUTH_ID: '@Microsoft.KeyVault(SecretUri=${secretUri}${secretNames.o365WebhookAuthId})'
} : {}
var secretSettings = union(ticketWebhookUrlSetting, ticketWebhookSecretSetting, teamsWebhookUrlSetting, servicenowPasswordSetting, servicenowTokenSetting, jiraApiTokenSetting, alertsSharedSecretSetting, o365WebhookAuthIdSetting)

// Identity-based host storage (no connection string anywhere) and Entra-authenticated telemetry.
var hostSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
}

var productSettings = {
  TENANT_ID: tenantId
  AZURE_CLIENT_ID: identity.outputs.clientId
  POLICY_FILE: policyFile
  POLICY_YAML: policyYaml
  SERVICENOW_INSTANCE_URL: servicenowInstanceUrl
  SERVICENOW_USERNAME: servicenowUsername
  JIRA_SITE_URL: jiraSiteUrl
  JIRA_EMAIL: jiraEmail
  ADMIN_API_AUDIENCE: adminApiAudience
  GRAPH_BASE_URL: graphBaseUrl
  EXCHANGE_BASE_URL: exchangeBaseUrl
  ENTRA_AUTHORITY: entraAuthority
  O365_API_ROOT: o365ApiRoot
  O365_PUBLISHER_ID: o365PublisherId
  TABLE_PREFIX: tablePrefix
  HTTP_TIMEOUT_SECONDS: string(httpTimeoutSeconds)
  EXCHANGE_TIMEOUT_SECONDS: string(exchangeTimeoutSeconds)
  VERIFY_AFTER: string(verifyAfterMinutes)
  POLL_ALERTS_MINUTES: string(pollAlertsMinutes)
  SWEEP_MINUTES: string(sweepMinutes)
}

var defenderEnabled = !empty(defenderEventHubNamespace) && !empty(defenderEventHubName)

// Set only when the hub is configured: DEFENDER_EVENTHUB_NAME registers the trigger, which needs its connection.
var defenderSettings = defenderEnabled ? {
  DEFENDER_EVENTHUB_NAME: defenderEventHubName
  DEFENDER_EVENTHUB__fullyQualifiedNamespace: '${defenderEventHubNamespace}.servicebus.windows.net' // public cloud
  DEFENDER_EVENTHUB__credential: 'managedidentity'
  DEFENDER_EVENTHUB__clientId: identity.outputs.clientId
  DEFENDER_EVENTHUB_CONSUMER_GROUP: defenderEventHubConsumerGroup
} : {}

module eventHubAccess './app/eventhub-access.bicep' = if (defenderEnabled) {
  name: 'eventhub-access'
  scope: resourceGroup(empty(defenderEventHubResourceGroup) ? names.resourceGroup : defenderEventHubResourceGroup)
  params: {
    namespaceName: defenderEventHubNamespace
    eventHubName: defenderEventHubName
    receiverPrincipalId: identity.outputs.principalId
  }
  dependsOn: [
    rg
  ]
}

module functionApp './app/function.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    identityId: identity.outputs.id
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    appInsightsName: monitoring.outputs.appInsightsName
    appSettings: union(hostSettings, productSettings, secretSettings, defenderSettings)
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    pythonVersion: pythonVersion
  }
  // The vault's secrets and role, and the Event Hub role, must exist before the host starts and resolves them
  // (storage and monitoring are waited for through their outputs).
  dependsOn: [
    keyVault
    eventHubAccess
  ]
}

// ---------------------------------------------------------------------------------------------------------
// Outputs: names, ids and URLs only (azd writes them to the environment; the permissions script reads them).
// ---------------------------------------------------------------------------------------------------------

output AZURE_RESOURCE_GROUP string = rg.name
output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_HOSTNAME string = functionApp.outputs.defaultHostName
output IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output IDENTITY_CLIENT_ID string = identity.outputs.clientId
output KEY_VAULT_NAME string = keyVault.outputs.name
