"""The Kubernetes runtime's parts: the API client, the list-and-watch reader, the watch cache,
Events, API-server outages and the peering objects of leader election."""
