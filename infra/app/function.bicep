// The Flex Consumption plan (FC1) and the function app. Everything the app needs arrives through app settings
// and the user-assigned identity; the code package comes from a blob container the identity reads.

param name string
param planName string
param location string
param tags object

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Blob container URL the platform deploys the code package from.')
param deploymentContainerUrl string

param appInsightsName string

@description('App settings (names -> values). Secrets arrive as Key Vault references, never as values.')
param appSettings object

@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

param pythonVersion string

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

var settingList = [
  for setting in items(appSettings): {
    name: setting.key
    value: setting.value
  }
]

// The connection string is read here rather than passed in, so it never appears in a module's inputs.
var telemetrySetting = [
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsights.properties.ConnectionString
  }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:Zone redundancy on FC1 needs at least two always-ready instances per function group, i.e. paying around the clock; this app is queue-driven and its events wait in storage through a zonal outage.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux: the only OS Flex Consumption runs
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api' // azd deploy finds the app by this tag
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    //checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP(S) endpoint, and FC1 rejects siteConfig.ftpsState as an invalid property (ARM error 51021): there is nothing to turn off.
    //checkov:skip=CKV_AZURE_18:siteConfig.http20Enabled is left unset: siteConfig carries only what FC1 is known to accept (the Flex quickstart sets only minTlsVersion).
    //checkov:skip=CKV_AZURE_67:Same property as CKV_AZURE_18 (siteConfig.http20Enabled), left unset on FC1 for the same reason.
    //checkov:skip=CKV_AZURE_17:The callers (the Management Activity API webhook, the Sentinel playbook's HTTP action, admins' tools) cannot present client certificates; function keys, the Webhook-AuthID and Entra tokens authenticate them.
    //checkov:skip=CKV_AZURE_222:The webhooks must be reachable from Microsoft's services (Management Activity API, Logic Apps), which call over the internet; every route needs a function key or an Entra token.
    //checkov:skip=CKV_AZURE_212:numberOfWorkers is a dedicated-plan setting; Flex Consumption adds instances per function on demand, up to maximumInstanceCount.
    //checkov:skip=CKV_AZURE_213:App Service health check evicts instances from a fixed pool; Flex Consumption manages its instances itself, and every route of this app requires a key or a token.
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    // Key Vault references resolve with the user-assigned identity (the app has no system identity).
    keyVaultReferenceIdentity: identityId
    // Only what FC1 accepts: it rejects several classic siteConfig properties (ftpsState, linuxFxVersion,
    // use32BitWorkerProcess, ...) with ARM error 51021. The runtime and scale live in functionAppConfig.
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: concat(settingList, telemetrySetting)
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        // Every instance calls Graph and Exchange for the same tenant: more instances buy throttling, not
        // speed, and a cap bounds what a flood of forged webhooks can cost.
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// azd and the Functions tools deploy with Entra ID tokens; publishing with basic (user/password) credentials
// stays off. (Flex Consumption has no FTP endpoint, so there is no ftp policy to set.)
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
