// Log Analytics + workspace-based Application Insights with local (instrumentation key) auth turned off:
// only the app's identity, holding Monitoring Metrics Publisher, can send telemetry.

param workspaceName string
param appInsightsName string
param location string
param tags object
param retentionInDays int

@description('Principal id of the identity that sends telemetry.')
param publisherPrincipalId string

// Monitoring Metrics Publisher: the role Entra-authenticated ingestion requires once local auth is off.
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      // Readers need a role on the workspace or on the resource whose logs they read.
      enableLogAccessUsingOnlyResourcePermissions: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    // No instrumentation-key ingestion: the connection string alone cannot write telemetry.
    DisableLocalAuth: true
  }
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, publisherPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: publisherPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Names only: the connection string is read where it is used (app.bicep), never passed around or output.
output appInsightsName string = appInsights.name
output workspaceName string = workspace.name
