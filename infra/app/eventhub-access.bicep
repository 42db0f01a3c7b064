// Optional: lets the app's identity read the Event Hub the Defender XDR streaming API writes to (the
// defender_stream trigger). Scoped to that one hub, not the namespace. Deployed into the hub's resource group.

param namespaceName string
param eventHubName string

@description('Principal id of the app identity.')
param receiverPrincipalId string

var eventHubsDataReceiver = 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde' // receive events, nothing else

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: namespaceName
}

resource hub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: namespace
  name: eventHubName
}

resource receiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, receiverPrincipalId, eventHubsDataReceiver)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiver)
    principalId: receiverPrincipalId
    principalType: 'ServicePrincipal'
    description: 'restricted-sender-responder: Defender XDR streaming trigger'
  }
}
