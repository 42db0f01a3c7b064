// Key Vault for the secrets the app settings reference: ticket-system credentials, the webhook secrets and
// the Management Activity AuthID. RBAC mode (no access policies), soft delete with purge protection. The app
// identity may only read secret values (Key Vault Secrets User); an optional operator principal may write them.

param name string
param location string
param tags object

@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string

@description('Principal id of the app identity (reads secret values through Key Vault references).')
param readerPrincipalId string

@description('Optional principal (user or group object id) allowed to set secrets by hand. Empty: nobody.')
param officerPrincipalId string

@secure()
@description('Secret name -> value. Entries with an empty value are not written (a secret already in the vault is kept).')
param secrets object

var secretsUser = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User: get secret values, nothing else
var secretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7' // Key Vault Secrets Officer: manage secrets, not the vault

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109:Flex Consumption cannot resolve Key Vault references from a network-restricted vault (documented limitation), so the firewall stays open; Azure RBAC (Key Vault Secrets User for the app identity only) is the gate.
  //checkov:skip=CKV_AZURE_189:Same limitation: public network access is a parameter (keyVaultPublicNetworkAccess) defaulting to Enabled, because Disabled breaks every secret app setting on Flex Consumption.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      // Flex Consumption resolves Key Vault references over the vault's public endpoint only (a
      // network-restricted vault breaks them), so no IP rules here; RBAC is the gate.
      defaultAction: publicNetworkAccess == 'Enabled' ? 'Allow' : 'Deny'
      bypass: 'AzureServices'
    }
  }
}

resource secretValues 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [
  for secret in items(secrets): if (!empty(secret.value)) {
    //checkov:skip=CKV_AZURE_41:These are credentials issued and rotated by other systems (ServiceNow, Jira, the ticket webhook, the Management Activity subscription); an expiry fixed at deploy time would not follow their rotation.
    parent: vault
    name: secret.key
    properties: {
      value: secret.value
      contentType: 'text/plain'
    }
  }
]

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, readerPrincipalId, secretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUser)
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
    description: 'restricted-sender-responder: resolve Key Vault references in app settings'
  }
}

resource officer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(officerPrincipalId)) {
  name: guid(vault.id, officerPrincipalId, secretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsOfficer)
    principalId: officerPrincipalId
    description: 'restricted-sender-responder: set secrets by hand'
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
