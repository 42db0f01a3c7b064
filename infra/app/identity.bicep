// The one identity the app uses for everything: host storage, its own queues and tables, Key Vault
// references, Application Insights ingestion, Graph, Exchange and the Management Activity API.
// User-assigned, so its principal exists before the app does (roles and Graph grants can be given first)
// and outlives a rebuilt app.

param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
