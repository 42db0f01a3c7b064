// The dashboard (README "Dashboard", docs/operations.md): an Azure Monitor workbook over the app's Application
// Insights. Its queries live in workbook.json; `make test` checks each one with Kusto's own analyzer against
// scripts/kql-schema.json (scripts/kql-check.mjs), so edit them there and keep the check green.

@description('Application Insights resource the workbook reads (the app\'s, from monitoring.bicep).')
param appInsightsName string
param location string
param tags object

@description('Title of the workbook in the portal.')
param displayName string = 'Restricted Sender Responder'

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID: derived from the Application Insights resource, so `azd up` updates this one
  // in place instead of adding another.
  name: guid(appInsights.id, 'restricted-sender-responder-workbook')
  location: location
  // The portal lists a workbook by its hidden-title tag.
  tags: union(tags, {
    'hidden-title': displayName
  })
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    // Opened from the Application Insights resource (Workbooks), and from anywhere else against it.
    sourceId: appInsights.id
    serializedData: replace(loadTextContent('workbook.json'), '__APP_INSIGHTS_ID__', appInsights.id)
  }
}

output name string = workbook.name
