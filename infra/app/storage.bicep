// The storage account behind AzureWebJobsStorage: the host's blobs (keys, timer and checkpoint leases),
// the deployment package container, and the product's queues and tables. Shared keys are off, so every
// caller signs in with Entra ID; the app's identity gets exactly the three data roles it needs.

param name string
param location string
param tags object
param deploymentContainerName string

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string

@description('Principal id of the app identity.')
param appPrincipalId string

// Built-in data roles (the data plane only; none of them can read keys or change the account).
var roles = [
  {
    // Storage Blob Data Owner: the Functions host keeps its keys, timer-trigger locks and Event Hubs
    // checkpoints in blobs and manages their leases, and the platform reads the deployment package from
    // the deployment container. Contributor is not enough for the host's container management.
    id: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
    name: 'blob-owner'
  }
  {
    // Storage Queue Data Contributor: the queue triggers read and delete messages (restriction-events,
    // restriction-verify, alert-content) and move poison messages; the product creates and sends to them.
    id: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
    name: 'queue-contributor'
  }
  {
    // Storage Table Data Contributor: the product's claims, unblock ledger and audit tables (<prefix>claims,
    // <prefix>unblocks, <prefix>audit), which it creates on first use and writes with conditional inserts.
    id: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
    name: 'table-contributor'
  }
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35:Flex Consumption without VNet integration reaches its host storage over the public endpoint; access is Entra-only (shared keys off) and limited to the app identity's data roles.
  //checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: the app has no virtual network to reach a private endpoint from.
  //checkov:skip=CKV_AZURE_206:Replication is a parameter (storageSku); its LRS default keeps three copies of what is mostly transient (host leases, queued work), and geo-replicating the audit table is a residency and cost decision left to the operator.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    // A deleted deployment package or host blob can be brought back for a week.
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource dataRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roles: {
    name: guid(account.id, appPrincipalId, role.id)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.id)
      principalId: appPrincipalId
      principalType: 'ServicePrincipal'
      description: 'restricted-sender-responder ${role.name}'
    }
  }
]

output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainer.name}'
