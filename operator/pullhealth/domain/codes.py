"""Diagnosis codes: the single source of truth.

Every code carries its one-line summary template, concrete remediation steps and the
`az acr check-health` error it corresponds to (where one exists), so that the CLI, the
operator's status, pod annotations, events and the generated docs all read from here.

Templates use ``{name}`` placeholders filled by :func:`render`; a placeholder with no
value is shown as ``<name>`` so a summary never raises and never invents a value.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class CodeInfo:
    """What pullhealth says about one diagnosis code."""

    summary: str
    remediation: tuple[str, ...]
    check_health_error: str | None = None
    coarse: bool = False


class Code(StrEnum):
    """Diagnosis codes, in rough pull-path order (network first, content last)."""

    OK = "OK"
    DNS_NXDOMAIN = "DNS_NXDOMAIN"
    DNS_TIMEOUT = "DNS_TIMEOUT"
    PRIVATE_ENDPOINT_DNS = "PRIVATE_ENDPOINT_DNS"
    CONNECT_REFUSED = "CONNECT_REFUSED"
    CONNECT_TIMEOUT = "CONNECT_TIMEOUT"
    PROXY_ERROR = "PROXY_ERROR"
    TLS_UNTRUSTED = "TLS_UNTRUSTED"
    TLS_HOSTNAME_MISMATCH = "TLS_HOSTNAME_MISMATCH"
    TLS_PROTOCOL_ERROR = "TLS_PROTOCOL_ERROR"
    DESTINATION_REFUSED = "DESTINATION_REFUSED"
    FIREWALL_FORBIDDEN = "FIREWALL_FORBIDDEN"
    DATA_ENDPOINT_UNREACHABLE = "DATA_ENDPOINT_UNREACHABLE"
    CHALLENGE_ERROR = "CHALLENGE_ERROR"
    RATE_LIMITED = "RATE_LIMITED"
    REGISTRY_ERROR = "REGISTRY_ERROR"
    PULL_SECRET_MISSING = "PULL_SECRET_MISSING"
    PULL_SECRET_INVALID = "PULL_SECRET_INVALID"
    PULL_SECRET_NO_MATCH = "PULL_SECRET_NO_MATCH"
    PULL_SECRET_STALE = "PULL_SECRET_STALE"
    AUTH_REQUIRED = "AUTH_REQUIRED"
    CREDENTIALS_REJECTED = "CREDENTIALS_REJECTED"
    AAD_APP_NOT_REGISTERED = "AAD_APP_NOT_REGISTERED"
    IDENTITY_UNAVAILABLE = "IDENTITY_UNAVAILABLE"
    IDENTITY_NOT_ALLOWED = "IDENTITY_NOT_ALLOWED"
    TOKEN_REALM_REFUSED = "TOKEN_REALM_REFUSED"
    TOKEN_EXCHANGE_DENIED = "TOKEN_EXCHANGE_DENIED"
    AAD_AUDIENCE_REJECTED = "AAD_AUDIENCE_REJECTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    ACCESS_DENIED = "ACCESS_DENIED"
    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND"
    REPOSITORY_NOT_FOUND = "REPOSITORY_NOT_FOUND"
    TAG_NOT_FOUND = "TAG_NOT_FOUND"
    PLATFORM_NOT_FOUND = "PLATFORM_NOT_FOUND"
    INVALID_IMAGE_NAME = "INVALID_IMAGE_NAME"
    PULL_QPS_EXCEEDED = "PULL_QPS_EXCEEDED"
    PULL_TIMED_OUT = "PULL_TIMED_OUT"
    NODE_DISK_FULL = "NODE_DISK_FULL"
    IMAGE_SIGNATURE_REJECTED = "IMAGE_SIGNATURE_REJECTED"
    # A running container's tag, checked before the next pull (workload checks, issue 22).
    TAG_DELETED = "TAG_DELETED"
    TAG_MOVED = "TAG_MOVED"
    UNKNOWN = "UNKNOWN"

    @property
    def info(self) -> CodeInfo:
        """The summary template, remediation and check-health mapping of this code."""
        return CATALOG[self]

    @property
    def healthy(self) -> bool:
        """True only for OK."""
        return self is Code.OK


CATALOG: Mapping[Code, CodeInfo] = {
    Code.OK: CodeInfo(
        summary="{registry} is reachable and {verdict}",
        remediation=(),
    ),
    Code.DNS_NXDOMAIN: CodeInfo(
        summary="the name {host} does not exist in DNS (NXDOMAIN) as seen from here",
        remediation=(
            "Check the registry name for typos: az acr show --name <registry> --query loginServer",
            "From a pod, run: kubectl run dnscheck --rm -it --restart=Never "
            "--image=busybox -- nslookup {host}",
            "If the cluster uses custom DNS, make sure it forwards to Azure DNS (168.63.129.16) "
            "or resolves the registry's zone",
        ),
        check_health_error="CONNECTIVITY_DNS_ERROR",
    ),
    Code.DNS_TIMEOUT: CodeInfo(
        summary="DNS lookup of {host} failed: {detail}",
        remediation=(
            "Check that CoreDNS is running: kubectl -n kube-system get pods -l k8s-app=kube-dns",
            "Check the node's DNS servers and the VNet's custom DNS setting: "
            "az network vnet show -g <rg> -n <vnet> --query dhcpOptions.dnsServers",
            "Check network policies or NSGs blocking UDP/TCP 53 to the DNS servers",
        ),
        check_health_error="CONNECTIVITY_DNS_ERROR",
    ),
    Code.PRIVATE_ENDPOINT_DNS: CodeInfo(
        summary="{host} resolves to {address}, but the registry is meant to be reached "
        "through a private endpoint ({detail})",
        remediation=(
            "Link the private DNS zone privatelink.azurecr.io to the cluster's VNet: "
            "az network private-dns link vnet create -g <rg> -z privatelink.azurecr.io "
            "-n <link> -v <vnet-id> -e false",
            "Check the A records of the private endpoint: az network private-dns record-set a "
            "list -g <rg> -z privatelink.azurecr.io -o table",
            "If a custom DNS server is used, add a conditional forwarder for azurecr.io to 168.63.129.16",
        ),
        check_health_error="CONNECTIVITY_DNS_ERROR",
    ),
    Code.CONNECT_REFUSED: CodeInfo(
        summary="the connection to {host} at {address} was refused",
        remediation=(
            "Check the registry host and port in the image reference",
            "Check that the registry (or the proxy in front of it) listens on that port",
            "For ACR with a private endpoint, check the endpoint's connection state: "
            "az network private-endpoint show -g <rg> -n <endpoint>",
        ),
        check_health_error="CONNECTIVITY_SSL_ERROR",
    ),
    Code.CONNECT_TIMEOUT: CodeInfo(
        summary="no answer from {host} at {address} (connection timed out or unreachable)",
        remediation=(
            "Check outbound rules: NSGs, Azure Firewall or UDR must allow TCP 443 to the "
            "registry and its data endpoint (<registry>.<region>.data.azurecr.io)",
            "List the registry's network rules: az acr show --name <registry> --query networkRuleSet",
            "Check HTTP(S)_PROXY / NO_PROXY settings of the node runtime",
        ),
        check_health_error="CONNECTIVITY_SSL_ERROR",
    ),
    Code.PROXY_ERROR: CodeInfo(
        summary="the egress HTTP proxy {proxy} failed the connection to {host}: {detail}",
        remediation=(
            "Check the proxy the runtime uses (HTTPS_PROXY of containerd/CRI-O/dockerd on the "
            "node); on AKS it comes from the cluster's httpProxyConfig: az aks show -n <cluster> "
            "-g <rg> --query httpProxyConfig",
            "If the registry should be reached directly, list it and its data endpoint in NO_PROXY "
            "(for ACR: <registry>.azurecr.io and <registry>.<region>.data.azurecr.io); on AKS: "
            "az aks update -n <cluster> -g <rg> --http-proxy-config <file.json>",
            "If the proxy answered 407, give the runtime proxy credentials "
            "(http://<user>:<password>@proxy:port in HTTPS_PROXY) or allow the nodes without them",
            "If the proxy refused CONNECT, allow the registry and its data endpoint (port 443) on the proxy",
        ),
    ),
    Code.TLS_UNTRUSTED: CodeInfo(
        summary="the TLS certificate of {host} is not trusted (issuer: {issuer})",
        remediation=(
            "If the issuer is a corporate proxy or firewall doing TLS inspection, exempt the "
            "registry endpoints from inspection",
            "For a private CA, add the CA to the node trust store or containerd's hosts.toml "
            '(ca = "/etc/containerd/certs.d/<registry>/ca.crt")',
        ),
        check_health_error="CONNECTIVITY_SSL_ERROR",
    ),
    Code.TLS_HOSTNAME_MISMATCH: CodeInfo(
        summary="the TLS certificate presented at {host} is not valid for that name",
        remediation=(
            "Use the login server name exactly: az acr show --name <registry> --query loginServer",
            "Check that DNS points {host} at the registry and not at another service",
        ),
        check_health_error="CONNECTIVITY_SSL_ERROR",
    ),
    Code.TLS_PROTOCOL_ERROR: CodeInfo(
        summary="the TLS handshake with {host} failed: {detail}",
        remediation=(
            "If the registry serves plain HTTP, configure it as an insecure registry in "
            "containerd's hosts.toml, or better, enable TLS on it",
            "Check for a proxy that breaks TLS between the node and the registry",
        ),
        check_health_error="CONNECTIVITY_SSL_ERROR",
    ),
    Code.FIREWALL_FORBIDDEN: CodeInfo(
        summary="{host} refused this client by network rule{detail}",
        remediation=(
            "List the registry's network rules: az acr show --name <registry> --query networkRuleSet",
            "Allow the cluster's egress IP (the address the registry saw: {client_ip}): az acr "
            "network-rule add --name <registry> --ip-address {client_ip}",
            "Or reach the registry through a private endpoint; see https://aka.ms/acr/firewall",
            "If the cluster's egress proxy refused the tunnel, allow the registry and its data "
            "endpoint on the proxy, or list them in NO_PROXY",
        ),
        check_health_error="CONNECTIVITY_FORBIDDEN_ERROR",
    ),
    # The data path: the login server answers, the host its blob download redirects to does
    # not (a firewall that allows the login server only). ACR's words: the dedicated data
    # endpoint <registry>.<region>.data.azurecr.io, or a storage account *.blob.core.windows.net
    # (learn.microsoft.com/azure/container-registry/container-registry-dedicated-data-endpoints).
    Code.DATA_ENDPOINT_UNREACHABLE: CodeInfo(
        summary="{registry} serves the manifest of {image}, but its layer download is redirected to "
        "{data_host}, which fails from here at the {data_step} step ({detail}): the login server is "
        "reachable, the data endpoint is not",
        remediation=(
            "Allow the registry's data endpoints in the firewall (Azure Firewall, NSG, proxy), beside "
            "the login server: with dedicated data endpoints <registry>.<region>.data.azurecr.io (here "
            "{data_host}), without them the storage accounts *.blob.core.windows.net; list them: az acr "
            "show-endpoints --name <registry>",
            "Behind a private endpoint, the data endpoint needs its own A record in the "
            "privatelink.azurecr.io zone (<registry>.<region>.data): az network private-endpoint show "
            "-g <rg> -n <endpoint> --query customDnsConfigs",
            "Check which data endpoints the registry uses: az acr show --name <registry> --query "
            "dataEndpointEnabled (enabling them moves downloads off *.blob.core.windows.net: "
            "az acr update --name <registry> --data-endpoint-enabled true); see https://aka.ms/acr/firewall",
            "If an egress proxy carries the pull, allow {data_host} on it too, or list it in NO_PROXY",
        ),
    ),
    Code.DESTINATION_REFUSED: CodeInfo(
        summary="pullhealth did not connect to {host}: {detail}",
        remediation=(
            "A registry on localhost or 127.0.0.0/8 is the node's own loopback: kubelet pulls "
            "from the node, so check it there (crictl pull <image>) or publish the registry "
            "on a routable address",
            "If the address is a legitimate registry, the cluster admin can allow it: "
            "helm upgrade ... --set security.destinations.allowCidrs={{<cidr>}} "
            "(pullhealth run --allow-cidr <cidr>); see docs/security.md",
        ),
    ),
    Code.CHALLENGE_ERROR: CodeInfo(
        summary="{host} did not answer GET /v2/ like an OCI registry: {detail}",
        remediation=(
            "Check that the host is the registry's login server and not a web front end",
            "Check any proxy between the cluster and the registry",
        ),
        check_health_error="CONNECTIVITY_CHALLENGE_ERROR",
    ),
    Code.RATE_LIMITED: CodeInfo(
        summary="{host} is rate limiting this client (429 Too Many Requests)",
        remediation=(
            "Authenticate pulls (anonymous pulls get the lowest limits): kubectl create secret "
            "docker-registry <name> --docker-server={registry} --docker-username=<user> "
            "--docker-password=<password>",
            "Mirror the image into your own registry: az acr import --name <registry> "
            "--source {registry}/{repository}:{tag}",
        ),
        check_health_error="CONNECTIVITY_TOOMANYREQUESTS_ERROR",
    ),
    Code.REGISTRY_ERROR: CodeInfo(
        summary="{host} answered with a server error: {detail}",
        remediation=(
            "Check the registry's service health (Azure status page, Resource Health: "
            "az resource show --ids <registry-id>)",
            "Retry later; the failure is on the registry side",
        ),
        check_health_error="CONNECTIVITY_CHALLENGE_ERROR",
    ),
    Code.PULL_SECRET_MISSING: CodeInfo(
        summary="the image pull secret {secret} does not exist in namespace {namespace}",
        remediation=(
            "Create it in the pod's namespace: kubectl -n {namespace} create secret "
            "docker-registry {secret} --docker-server={registry} --docker-username=<user> "
            "--docker-password=<password>",
            "Or fix the name in spec.imagePullSecrets / the service account's imagePullSecrets",
        ),
    ),
    Code.PULL_SECRET_INVALID: CodeInfo(
        summary="the image pull secret {secret} cannot be used: {detail}",
        remediation=(
            "Recreate it with kubectl so the type and encoding are right: kubectl -n {namespace} "
            "create secret docker-registry {secret} --docker-server={registry} "
            "--docker-username=<user> --docker-password=<password> --dry-run=client -o yaml "
            "| kubectl apply -f -",
            "Inspect its keys (not values): kubectl -n {namespace} get secret {secret} "
            "-o jsonpath='{{.type}} {{.data}}' | cut -c1-80",
        ),
    ),
    Code.PULL_SECRET_NO_MATCH: CodeInfo(
        summary="no pull secret has credentials for {registry}",
        remediation=(
            "Add a secret whose server is exactly {registry}: kubectl create secret "
            "docker-registry <name> --docker-server={registry} ...",
            "For ACR, attach the registry to the cluster instead: az aks update -n <cluster> "
            "-g <rg> --attach-acr <registry>",
        ),
    ),
    Code.PULL_SECRET_STALE: CodeInfo(
        summary="anonymous pull of {repository} works, but {registry} rejected {credential}: the pull "
        "secret {secret} is stale (kubelet sends it, so the pull fails); remove or fix it",
        remediation=(
            "Remove {secret} from the pod's spec.imagePullSecrets and its service account's "
            "imagePullSecrets: anonymous pull works without it",
            "Or fix it with current credentials: kubectl -n {namespace} create secret docker-registry "
            "{secret} --docker-server={registry} --docker-username=<user> --docker-password=<password> "
            "--dry-run=client -o yaml | kubectl apply -f -",
            "Check that anonymous pull is meant to stay enabled: az acr show --name <registry> "
            "--query anonymousPullEnabled",
        ),
    ),
    Code.AUTH_REQUIRED: CodeInfo(
        summary="{registry} requires authentication for {repository} and none was sent",
        remediation=(
            "Give the pod a pull secret: kubectl create secret docker-registry <name> "
            "--docker-server={registry} --docker-username=<user> --docker-password=<password>",
            "For ACR, attach it to the cluster: az aks update -n <cluster> -g <rg> "
            "--attach-acr <registry>, or check the kubelet identity: az aks check-acr -n "
            "<cluster> -g <rg> --acr {registry}",
        ),
        check_health_error="CONNECTIVITY_AAD_LOGIN_ERROR",
    ),
    Code.CREDENTIALS_REJECTED: CodeInfo(
        summary="{registry} rejected the credentials ({credential})",
        remediation=(
            "The user name tells the kind of credential: the registry's name is the admin user "
            "(az acr credential show --name <registry>); a GUID is a service principal (expired or "
            "wrong client secret: az ad app credential list --id <app-id> --query "
            '"[].endDateTime"); any other name is a repository-scoped token (disabled or expired: '
            'az acr token show --name <token> --registry <registry> --query status)',
            "Recreate the pull secret with the current password: kubectl -n {namespace} create secret "
            "docker-registry <name> --docker-server={registry} --docker-username=<user> "
            "--docker-password=<password> --dry-run=client -o yaml | kubectl apply -f -",
            "If the repository allows anonymous pull (az acr show --name <registry> --query "
            "anonymousPullEnabled), a rejected secret is stale: remove it from imagePullSecrets",
        ),
        check_health_error="CONNECTIVITY_REFRESH_TOKEN_ERROR",
    ),
    Code.AAD_APP_NOT_REGISTERED: CodeInfo(
        summary="{registry} answered 'Application not registered with AAD' for {credential}: no "
        "admin user, token or Azure AD application of that user name is known to the registry's tenant",
        remediation=(
            "Check the user name: a service principal's application (client) id, the admin user "
            "(az acr credential show --name <registry> --query username) or a token's name "
            "(az acr token list --registry <registry> -o table)",
            "For a service principal, check it exists in the registry's tenant (az account show "
            "--query tenantId, in the registry's subscription): az ad sp show --id <app-id> "
            '--query "{{appId:appId, tenant:appOwnerOrganizationId}}"',
            "A multitenant application must be provisioned in the registry's tenant first: "
            "az ad sp create --id <app-id> (signed in to that tenant), then grant it pull on the registry",
        ),
    ),
    Code.IDENTITY_UNAVAILABLE: CodeInfo(
        summary="no Azure AD token could be obtained for the identity ({detail})",
        remediation=(
            "Check the kubelet identity: az aks show -n <cluster> -g <rg> "
            "--query identityProfile.kubeletidentity",
            "For workload identity, check the service account annotation "
            "azure.workload.identity/client-id and the federated credential: az identity "
            "federated-credential list --identity-name <identity> -g <rg>",
        ),
        check_health_error="CONNECTIVITY_AAD_LOGIN_ERROR",
    ),
    Code.IDENTITY_NOT_ALLOWED: CodeInfo(
        summary="pullhealth did not use the identity: {detail}",
        remediation=(
            "Identity checks run only for registries in the operator's ACR domains, with the "
            "kubelet identity or a client id the cluster admin allowed: helm upgrade ... "
            "--set security.identities.managedIdentityClientIds={{<client-id>}} "
            "(pullhealth run --allow-managed-identity <client-id>)",
            "Workload identity checks need security.identities.workloadIdentity=true and use "
            "only the service account's own azure.workload.identity/client-id annotation",
        ),
    ),
    Code.TOKEN_REALM_REFUSED: CodeInfo(
        summary="pullhealth did not send credentials to the token service {realm} named by "
        "{host}: {detail}",
        remediation=(
            "Check the registry's WWW-Authenticate realm: curl -sI https://{registry}/v2/ | "
            "grep -i www-authenticate",
            "A token service must be reached over HTTPS; an Azure AD token is exchanged only at "
            "the ACR registry's own https://{host}/oauth2/exchange",
        ),
    ),
    Code.TOKEN_EXCHANGE_DENIED: CodeInfo(
        summary="{registry} refused to exchange the Azure AD token for a registry token",
        remediation=(
            "Grant the identity pull on the registry; which role depends on the registry's mode: "
            "az acr show --name <registry> --query roleAssignmentMode. RBAC only: az role assignment "
            "create --assignee <client-id> --role AcrPull --scope $(az acr show --name <registry> "
            '--query id -o tsv); ABAC (AbacRepositoryPermissions): the role "Container Registry '
            'Repository Reader" instead (AcrPull is not honoured there)',
            "Role assignments take minutes to propagate: a denial right after granting is expected; "
            "check again in a few minutes",
            "Check that the registry allows Azure AD authentication (not disabled by policy) "
            "and that the token's tenant is the registry's tenant",
        ),
        check_health_error="CONNECTIVITY_REFRESH_TOKEN_ERROR",
    ),
    Code.AAD_AUDIENCE_REJECTED: CodeInfo(
        summary="{registry} refused the Azure AD token's audience ({audience}): {detail}",
        remediation=(
            "ARM-audience tokens can be disabled on the registry: az acr config "
            "authentication-as-arm show -r <registry>",
            "Use ACR-audience tokens (https://containerregistry.azure.net), the operator's "
            "default; or enable ARM-audience authentication: az acr config "
            "authentication-as-arm update -r <registry> --status enabled",
        ),
        check_health_error="CONNECTIVITY_REFRESH_TOKEN_ERROR",
    ),
    Code.PERMISSION_DENIED: CodeInfo(
        summary="the credentials ({credential}) are valid but may not pull {repository}",
        remediation=(
            "Check the registry's role assignment mode: az acr show --name <registry> --query "
            "roleAssignmentMode. In AbacRepositoryPermissions (RBAC Registry + ABAC Repository "
            'Permissions) AcrPull is not honoured: assign "Container Registry Repository Reader", '
            "with an ABAC condition naming {repository} to limit it: az role assignment create "
            '--assignee <principal> --role "Container Registry Repository Reader" --scope '
            "$(az acr show --name <registry> --query id -o tsv) [--condition <condition> "
            "--condition-version 2.0]",
            "In LegacyRegistryPermissions (RBAC only), grant AcrPull: az role assignment create "
            "--assignee <principal> --role AcrPull --scope $(az acr show --name <registry> "
            "--query id -o tsv)",
            "Role assignments take minutes to propagate: a denial right after granting is expected; "
            "check again in a few minutes (a RegistryCheck: pullhealth recheck <name>)",
            "For repository-scoped tokens, add content/read to the scope map: az acr scope-map update "
            "--name <scope-map> --registry <registry> --add-repository {repository} content/read",
        ),
        check_health_error="CONNECTIVITY_ACCESS_TOKEN_ERROR",
    ),
    Code.ACCESS_DENIED: CodeInfo(
        summary="{registry} denied the pull of {repository}: missing credentials, wrong "
        "credentials, missing permission or a missing repository",
        remediation=(
            "Run a check with the pod's credentials to tell these apart (it also tries anonymously "
            "once when the credentials are rejected: a stale secret on a public repository): "
            "pullhealth check {registry}/{repository}:{tag} --docker-config <config.json>",
            "Check the pod's imagePullSecrets: kubectl get pod <pod> -o "
            "jsonpath='{{.spec.imagePullSecrets}}'",
        ),
        coarse=True,
    ),
    Code.IMAGE_NOT_FOUND: CodeInfo(
        summary="{registry} has no image {repository}:{tag} (repository or tag missing)",
        remediation=(
            "List the tags: az acr repository show-tags --name <registry> --repository {repository}",
            "Check the image reference in the pod spec for typos",
        ),
        coarse=True,
    ),
    Code.REPOSITORY_NOT_FOUND: CodeInfo(
        summary="{registry} has no repository {repository}",
        remediation=(
            "List repositories: az acr repository list --name <registry> -o table",
            "Check the repository path in the image reference (namespaces, case)",
        ),
    ),
    Code.TAG_NOT_FOUND: CodeInfo(
        summary="repository {repository} on {registry} has no tag or digest {tag}",
        remediation=(
            "List the tags: az acr repository show-tags --name <registry> --repository {repository} -o table",
            "Push the tag or fix the reference; a deleted or purged tag also shows here",
        ),
    ),
    Code.PLATFORM_NOT_FOUND: CodeInfo(
        summary="{repository}:{tag} has no image for platform {platform} (available: {detail})",
        remediation=(
            "Build and push a multi-platform image: docker buildx build --platform {platform} --push ...",
            "Or schedule the pod on nodes of an available platform (nodeSelector kubernetes.io/arch)",
        ),
    ),
    Code.INVALID_IMAGE_NAME: CodeInfo(
        summary="the image reference {reference} is not valid: {detail}",
        remediation=("Fix the image field: lowercase repository, host[:port]/path[:tag][@sha256:digest]",),
    ),
    # Node-local causes: kubelet or the runtime on the node stopped the pull, not the registry.
    Code.PULL_QPS_EXCEEDED: CodeInfo(
        summary="kubelet on the node refused to start the pull of {image}: its own image-pull rate "
        "limit (registryPullQPS / registryBurst) was exceeded; the registry was never asked",
        remediation=(
            "kubelet retries on its own; many pods starting at once on one node (a scale-up, a "
            "CronJob burst, a DaemonSet roll-out) exhaust the default of 5 pulls per second, burst 10",
            "Raise the limit in the kubelet configuration (KubeletConfiguration): registryPullQPS: 10 "
            "and registryBurst: 20 (0 disables the limit); on EKS/eksctl via kubeletExtraConfig, on "
            "OpenShift via a KubeletConfig resource",
            "Pre-pull common images (a DaemonSet or the node image) so fewer pulls start at once",
        ),
    ),
    Code.PULL_TIMED_OUT: CodeInfo(
        summary="the pull of {image} was cut off before it finished ({detail}): a large image "
        "against the runtime's request timeout or progress deadline, or a transfer that stalled",
        remediation=(
            "Compare the pod's Pulling and Failed Event times: minutes of pulling point at the image "
            "size and the node's timeouts, seconds at the network (see CONNECT_TIMEOUT)",
            "Give long pulls time: containerd cancels a pull with no progress for "
            "image_pull_progress_timeout ([plugins.\"io.containerd.grpc.v1.cri\"], default 5m); "
            "dockershim had --image-pull-progress-deadline (1m); cri-dockerd before 0.2.6 cut "
            "pulls at its request timeout (Mirantis/cri-dockerd#105): upgrade it",
            "Shrink the image (multi-stage builds, fewer and smaller layers) or pre-pull it onto "
            "the nodes (a DaemonSet or the node image)",
            "If pulls queue behind each other (\"including waiting\" in the Pulled Events), allow "
            "parallel pulls: serializeImagePulls: false and maxParallelImagePulls in the "
            "kubelet configuration",
        ),
    ),
    Code.NODE_DISK_FULL: CodeInfo(
        summary="the node ran out of disk while storing or unpacking {image} (no space left on "
        "device): the image filesystem is full, not the registry",
        remediation=(
            "Check the node's image filesystem: kubectl describe node <node> (DiskPressure), "
            "df -h /var/lib/containerd (or the runtime's root) on the node",
            "Let kubelet's image garbage collection start earlier: imageGCHighThresholdPercent / "
            "imageGCLowThresholdPercent in the kubelet configuration; remove unused images: "
            "crictl rmi --prune",
            "Give the node a larger OS or image disk (the node pool's disk size), or use smaller images",
        ),
    ),
    Code.IMAGE_SIGNATURE_REJECTED: CodeInfo(
        summary="the container runtime's signature policy on the node rejected {image} ({detail}): "
        "the registry served it, the node refused it (kubelet 1.28+ shows SignatureValidationFailed)",
        remediation=(
            "Check the image's signatures against the policy: cosign verify (sigstore) or skopeo "
            "inspect for the signature, and the signer identity (subject email, OIDC issuer) the "
            "policy requires",
            "Sign or re-sign the image (a new digest needs its own signature), or pull a signed tag",
            "If the image should be allowed, fix the runtime's policy on the node: CRI-O's "
            "signature_policy (policy.json) or its per-namespace signature_policy_dir "
            "(<dir>/<namespace>.json); containers-policy.json for podman",
            "kubelet keeps retrying with back-off; once the signature or policy is fixed the next "
            "pull succeeds",
        ),
    ),
    Code.TAG_DELETED: CodeInfo(
        summary="{repository}:{tag} on {registry} no longer exists, but container {container} runs "
        "it ({digest}): it keeps running, and the next pull (a reschedule, a new node, a "
        "scale-up) fails",
        remediation=(
            "Push the tag again, or pin the workload to the digest it runs: {repository}@{digest}",
            "Check the registry's retention or purge policy (ACR: az acr config retention show; "
            "az acr task list for acr purge tasks) and the upstream project's tag removals",
        ),
    ),
    Code.TAG_MOVED: CodeInfo(
        summary="{repository}:{tag} on {registry} now points to {current}, container {container} "
        "runs {digest}: the next pull gets different content",
        remediation=(
            "If the running content is the one you want, pin the workload to its digest: "
            "{repository}@{digest}",
            "Otherwise restart the workload to run the tag's new content: kubectl rollout restart ...",
        ),
    ),
    Code.UNKNOWN: CodeInfo(
        summary="the pull failed for a reason pullhealth does not recognise: {detail}",
        remediation=(
            "Read the pod's events: kubectl describe pod <pod>",
            "Run a full check: pullhealth check {registry}/{repository}:{tag}",
        ),
    ),
}


# --- ACR cases: one code, the guide's cause the evidence singles out ----------------------
# A case replaces the code's summary and remediation with the troubleshooting guide's remedy
# for that cause. It is chosen from facts the probes or the message gave (the credential's
# user name, the client IP in the firewall's 403, the DNS answer for the data endpoint, the
# identity endpoint's error), and only for an ACR registry or a message naming none: other
# registries keep their advice.


@dataclass(frozen=True)
class Case:
    """One ACR case of a code.

    Attributes:
        code: the code it refines.
        name: its short name (shown in ``facts["case"]``).
        when: the evidence that selects it, for people.
        info: its summary and remediation.
    """

    code: Code
    name: str
    when: str
    info: CodeInfo


_TOKEN_SHOW = "az acr token show --name {username} --registry <registry>"
ACR_CASES: tuple[Case, ...] = (
    Case(
        Code.CREDENTIALS_REJECTED,
        "acr-token",
        "the user name is neither the registry's name, a GUID nor ACR's refresh-token user: a "
        "repository-scoped token (az acr token)",
        CodeInfo(
            summary="{registry} rejected the repository-scoped token {username} ({credential}): the "
            "token is disabled, its password expired, or the password is wrong",
            remediation=(
                "Show its status and its passwords' expiry: " + _TOKEN_SHOW + ' --query "{{status:status, '
                'passwords:credentials.passwords[].{{name:name, expiry:expiry}}}}"',
                "If it is disabled, enable it: az acr token update --name {username} --registry <registry> "
                "--status enabled",
                "If its password expired (or is not the secret's), generate one and recreate the pull "
                "secret with it: az acr token credential generate --name {username} --registry "
                "<registry> --password1 --expiration-in-days <days>",
            ),
        ),
    ),
    Case(
        Code.CREDENTIALS_REJECTED,
        "acr-admin",
        "the user name is the registry's name: the admin user",
        CodeInfo(
            summary="{registry} rejected its admin user {username} ({credential}): the admin user is "
            "disabled or its password was regenerated",
            remediation=(
                "Check that the admin user is enabled: az acr show --name <registry> --query "
                "adminUserEnabled (better than enabling it: a repository-scoped token or the "
                "kubelet identity)",
                "Compare with the current passwords and recreate the pull secret: az acr credential show "
                "--name <registry>",
            ),
        ),
    ),
    Case(
        Code.CREDENTIALS_REJECTED,
        "acr-service-principal",
        "the user name is a GUID: a service principal's application id",
        CodeInfo(
            summary="{registry} rejected the service principal {username} ({credential}): its client "
            "secret expired or is wrong",
            remediation=(
                "Tell expired from wrong: az ad app credential list --id {username} --query "
                '"[].{{hint:hint, end:endDateTime}}" (an end in the past: expired; no hint matching '
                "the first characters of the secret's password: wrong secret)",
                "Add a new client secret and recreate the pull secret with it: az ad app credential "
                "reset --id {username} --append",
                "For the AKS cluster's own service principal: az aks update-credentials -n <cluster> "
                "-g <rg> --reset-service-principal --service-principal {username} "
                "--client-secret <new-secret>",
            ),
        ),
    ),
    Case(
        Code.CREDENTIALS_REJECTED,
        "acr-refresh-token",
        "the user name is ACR's refresh-token user (00000000-0000-0000-0000-000000000000) or the "
        "secret holds an identitytoken",
        CodeInfo(
            summary="{registry} rejected the ACR refresh token ({credential}): refresh tokens from "
            "az acr login --expose-token expire after a few hours",
            remediation=(
                "Do not keep refresh tokens in pull secrets: use a repository-scoped token (az acr token "
                "create --name <token> --registry <registry> --repository {repository} content/read) or "
                "the kubelet identity (az aks update -n <cluster> -g <rg> --attach-acr <registry>)",
            ),
        ),
    ),
    Case(
        Code.PERMISSION_DENIED,
        "acr-token",
        "a repository-scoped token authenticated, and the token's access claim has no pull on "
        "the repository",
        CodeInfo(
            summary="the repository-scoped token {username} ({credential}) is valid, but its scope map "
            "does not grant pull on {repository} (the token's access claim is empty)",
            remediation=(
                "Find its scope map: " + _TOKEN_SHOW + " --query scopeMapId; then az acr scope-map show "
                "--name <scope-map> --registry <registry> --query actions",
                "Add the repository: az acr scope-map update --name <scope-map> --registry <registry> "
                "--add-repository {repository} content/read",
                "Scope-map wildcards: one, at the end, after a slash (samples/* is valid; sample/*/teamA, "
                "sample/teamA* and more than one wildcard are not)",
            ),
        ),
    ),
    Case(
        Code.PERMISSION_DENIED,
        "acr-identity",
        "an Azure AD identity (the kubelet's managed identity, a workload identity) was exchanged, "
        "and its token has no pull on the repository",
        CodeInfo(
            summary="the identity {credential} signs in to {registry} but may not pull {repository}: "
            "no role, the role on another identity (system- vs user-assigned), AcrPull on an ABAC "
            "registry, or not propagated yet",
            remediation=(
                "Which identity kubelet uses (the user-assigned kubelet identity, not the scale set's "
                "system-assigned one): az aks show -n <cluster> -g <rg> --query "
                "identityProfile.kubeletidentity.clientId",
                "Which roles it has on the registry: az role assignment list --assignee <client-id> "
                "--scope $(az acr show --name <registry> --query id -o tsv) -o table",
                "Which role the registry honours: az acr show --name <registry> --query "
                'roleAssignmentMode (AbacRepositoryPermissions: "Container Registry Repository '
                'Reader", AcrPull is not honoured; LegacyRegistryPermissions: AcrPull, e.g. az aks '
                "update -n <cluster> -g <rg> --attach-acr <registry>)",
                "Role assignments take minutes to propagate: a denial right after granting is "
                "expected; check again in a few minutes",
            ),
        ),
    ),
    Case(
        Code.FIREWALL_FORBIDDEN,
        "vnet-service-endpoint",
        "the client IP in the firewall's 403 is a private address: the traffic arrives through "
        "a VNet service endpoint",
        CodeInfo(
            summary="{host} refused this client by network rule (403): the registry saw the private "
            "address {client_ip}, so the traffic comes through a VNet service endpoint and a public "
            "IP rule cannot match it",
            remediation=(
                "Allow the nodes' subnet: az acr network-rule add --name <registry> --subnet <subnet-id>",
                "Check the subnet's Microsoft.ContainerRegistry service endpoint: az network vnet subnet "
                "show --ids <subnet-id> --query serviceEndpoints (add it: az network vnet subnet update "
                "--ids <subnet-id> --service-endpoints Microsoft.ContainerRegistry)",
                "List the registry's rules: az acr show --name <registry> --query networkRuleSet; or "
                "reach it through a private endpoint: https://aka.ms/acr/firewall",
            ),
        ),
    ),
    Case(
        Code.PRIVATE_ENDPOINT_DNS,
        "data-endpoint-missing",
        "the login server resolves, the data endpoint (<registry>.<region>.data.azurecr.io) "
        "does not exist in DNS",
        CodeInfo(
            summary="the data endpoint {host} has no DNS record ({detail}) though the login server "
            "resolves: layers cannot be downloaded",
            remediation=(
                "Add the data endpoint's A record to the private DNS zone: az network private-dns "
                "record-set a add-record -g <rg> -z privatelink.azurecr.io -n <registry>.<region>.data "
                "-a <private-ip>",
                "The private endpoint's addresses, data endpoint included: az network private-endpoint "
                "show -g <rg> -n <endpoint> --query customDnsConfigs",
                "The registry's endpoints: az acr show-endpoints --name <registry>",
            ),
            check_health_error="CONNECTIVITY_DNS_ERROR",
        ),
    ),
    Case(
        Code.IDENTITY_UNAVAILABLE,
        "imds-identity-not-found",
        "the instance metadata service answered 'Identity not found': the identity asked for is "
        "not assigned to the node",
        CodeInfo(
            summary="the node has no managed identity of that id ({detail}): a system- or user-assigned "
            "identity is not enabled on the node pool",
            remediation=(
                "Kubelet pulls with the kubelet identity (user-assigned): az aks show -n <cluster> -g "
                "<rg> --query identityProfile.kubeletidentity.clientId",
                "List what the node pool's scale set has (system-assigned principalId, user-assigned "
                "ids): az vmss identity show -g <node-resource-group> -n <vmss>",
                "Assign it, or grant pull to the identity that is assigned: az vmss identity assign -g "
                "<node-resource-group> -n <vmss> --identities <identity-id>; az role assignment list "
                "--assignee <client-id> --scope $(az acr show --name <registry> --query id -o tsv)",
            ),
        ),
    ),
    Case(
        Code.IDENTITY_UNAVAILABLE,
        "sp-secret-expired",
        "Azure AD answered AADSTS7000222: the service principal's client secret expired",
        CodeInfo(
            summary="Azure AD refused the service principal: its client secret expired (AADSTS7000222)",
            remediation=(
                "Add a new client secret: az ad app credential reset --id <app-id> --append",
                "For the AKS cluster's service principal: az aks update-credentials -n <cluster> -g <rg> "
                "--reset-service-principal --service-principal <app-id> --client-secret <new-secret>",
            ),
        ),
    ),
    Case(
        Code.IDENTITY_UNAVAILABLE,
        "sp-secret-wrong",
        "Azure AD answered AADSTS7000215: the client secret is not one of the application's",
        CodeInfo(
            summary="Azure AD refused the service principal: the client secret is wrong (AADSTS7000215)",
            remediation=(
                "Compare with the application's secrets (hint = first characters): az ad app credential "
                'list --id <app-id> --query "[].{{hint:hint, end:endDateTime}}"',
                "Use the secret's value, not its id; or add a new one: az ad app credential reset --id "
                "<app-id> --append",
            ),
        ),
    ),
)
_CASES = {(c.code, c.name): c for c in ACR_CASES}
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ACR_REFRESH_USER = "00000000-0000-0000-0000-000000000000"


def acr_account(username: str | None, registry: str | None) -> str | None:
    """What kind of ACR account a Basic user name is (None: no user name).

    ACR's Basic users: the admin user (named like the registry), a service principal (its
    application id, a GUID), the refresh-token user, and repository-scoped tokens (any
    other name).
    """
    if not username:
        return None
    if username == ACR_REFRESH_USER:
        return "refresh-token"
    if _GUID.fullmatch(username):
        return "service-principal"
    name = (registry or "").lower().split(".", 1)[0]
    if name and username.lower() == name:
        return "admin"
    return "token"


# A VNet's own address space as a service endpoint shows it (RFC 1918, shared 100.64/10,
# IPv6 ULA); documentation and other special ranges are not a VNet client.
_VNET_RANGES = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def _private(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in _VNET_RANGES)


def acr_case(code: Code, facts: Mapping[str, str | None]) -> Case | None:
    """The ACR case of ``code`` the facts single out, or None.

    Only for an ACR registry or a message naming none (other registries keep their advice).
    """
    if facts.get("source") == SOURCE_DOCKER_CONFIG and code in DOCKER_CONFIG:
        return None
    if registry_kind(facts.get("registry")) not in (None, RegistryKind.ACR):
        return None
    detail = facts.get("detail") or ""
    name: str | None = None
    if code in (Code.CREDENTIALS_REJECTED, Code.PERMISSION_DENIED):
        account = facts.get("acr_account")
        name = f"acr-{account}" if account else None
    elif code is Code.FIREWALL_FORBIDDEN and _private(facts.get("client_ip")):
        name = "vnet-service-endpoint"
    elif code is Code.PRIVATE_ENDPOINT_DNS and facts.get("endpoint") == "data" and "NXDOMAIN" in detail:
        name = "data-endpoint-missing"
    elif code is Code.IDENTITY_UNAVAILABLE:
        aadsts = facts.get("aadsts") or detail
        name = (
            "imds-identity-not-found"
            if "Identity not found" in detail
            else "sp-secret-expired"
            if "AADSTS7000222" in aadsts
            else "sp-secret-wrong"
            if "AADSTS7000215" in aadsts
            else None
        )
    return _CASES.get((code, name)) if name else None


class _Lenient(dict[str, str]):
    """Formatting map that shows a missing placeholder as ``<name>``."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


_FORMATTER = string.Formatter()


def render(template: str, facts: Mapping[str, str | None]) -> str:
    """Fill ``{placeholders}`` from facts; a missing one becomes ``<name>``.

    Args:
        template: a summary or remediation template from the catalog.
        facts: known values (registry, host, repository, ...).

    Returns:
        The rendered text. Never raises on a missing key.
    """
    values = _Lenient({k: v for k, v in facts.items() if v is not None})
    return _FORMATTER.vformat(template, (), values)


assert set(CATALOG) == set(Code), "every code needs a catalog entry"


# --- remediation that fits the registry -------------------------------------------------
# CATALOG's remediation speaks ACR and `az` (AKS with ACR are the first users). For another
# kind of registry, the steps below replace it where the advice depends on the registry
# (not PROXY_ERROR: the proxy is the cluster's, AKS's httpProxyConfig whatever the registry);
# ECR, GCR/Artifact Registry and Docker Hub fall back to GENERIC, then to CATALOG (whose
# steps for those codes need no registry-specific command).


class RegistryKind(StrEnum):
    """Which registry service a host belongs to (decides the remediation's commands)."""

    ACR = "acr"
    ECR = "ecr"
    GCR = "gcr"  # Container Registry and Artifact Registry
    DOCKER_HUB = "dockerhub"
    GENERIC = "generic"


ACR_SUFFIXES = (".azurecr.io", ".azurecr.cn", ".azurecr.us")
_DOCKER_HUB_HOSTS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)


def registry_kind(registry: str | None) -> RegistryKind | None:
    """The kind of ``registry`` (host[:port]); None when no registry is known."""
    if not registry:
        return None
    host = registry.lower().rsplit("@", 1)[-1]
    host = host[: host.rindex(":")] if ":" in host and not host.endswith("]") else host
    if host.endswith(ACR_SUFFIXES):
        return RegistryKind.ACR
    if ".dkr.ecr." in host and host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return RegistryKind.ECR
    if host == "gcr.io" or host.endswith((".gcr.io", "-docker.pkg.dev")):
        return RegistryKind.GCR
    if host in _DOCKER_HUB_HOSTS:
        return RegistryKind.DOCKER_HUB
    return RegistryKind.GENERIC


_SECRET = (
    "kubectl -n {namespace} create secret docker-registry <name> --docker-server={registry} "
    "--docker-username=<user> --docker-password=<password>"
)
_ECR_SECRET = (
    "kubectl -n {namespace} create secret docker-registry <name> --docker-server={registry} "
    "--docker-username=AWS --docker-password=$(aws ecr get-login-password --region <region>)"
)
_HUB_SECRET = (
    "kubectl -n {namespace} create secret docker-registry dockerhub "
    "--docker-server=https://index.docker.io/v1/ --docker-username=<user> --docker-password=<access-token>"
)
_GAR_READER = (
    "gcloud artifacts repositories add-iam-policy-binding <repository> --location=<location> "
    "--member=serviceAccount:<service-account> --role=roles/artifactregistry.reader"
)
_ECR_TAGS = (
    "aws ecr list-images --repository-name {repository} --region <region> --query 'imageIds[].imageTag'"
)
_GAR_TAGS = "gcloud artifacts docker tags list {registry}/{repository}"
_GENERIC_TAGS = "skopeo list-tags docker://{registry}/{repository}"
_HUB_TAGS = (
    "https://hub.docker.com/r/{repository}/tags (or: skopeo list-tags docker://docker.io/{repository})"
)
_NSLOOKUP = (
    "From a pod, run: kubectl run dnscheck --rm -it --restart=Never --image=busybox -- nslookup {host}"
)
_EGRESS = "Check HTTP(S)_PROXY / NO_PROXY settings of the node runtime"

_G, _E, _C, _H = RegistryKind.GENERIC, RegistryKind.ECR, RegistryKind.GCR, RegistryKind.DOCKER_HUB

KIND_REMEDIATION: Mapping[Code, Mapping[RegistryKind, tuple[str, ...]]] = {
    Code.DNS_NXDOMAIN: {
        _G: (
            "Check the registry name for typos in the image reference: {registry}",
            _NSLOOKUP,
            "If the cluster uses custom DNS, make sure it resolves the registry's zone",
        ),
        _E: (
            "Check the account id and region in {registry}: aws ecr describe-registry --region <region>",
            _NSLOOKUP,
        ),
        _C: (
            "Check the location in the host (e.g. europe-west1-docker.pkg.dev): gcloud artifacts "
            "repositories list --format='value(name)'",
            _NSLOOKUP,
        ),
    },
    Code.DNS_TIMEOUT: {
        _G: (
            "Check that CoreDNS is running: kubectl -n kube-system get pods -l k8s-app=kube-dns",
            "Check the nodes' DNS servers (/etc/resolv.conf on a node, or the network's DHCP options)",
            "Check network policies or firewalls blocking UDP/TCP 53 to the DNS servers",
        ),
    },
    Code.CONNECT_REFUSED: {
        _G: (
            "Check the registry host and port in the image reference",
            "Check that the registry (or the proxy in front of it) listens on that port: "
            "curl -v https://{host}/v2/",
        ),
    },
    Code.CONNECT_TIMEOUT: {
        _G: (
            "Check outbound rules (security groups, firewalls, network policies): TCP 443 to {host} "
            "and to the storage host its blobs are served from",
            _EGRESS,
        ),
        _E: (
            "Allow TCP 443 to ECR and S3 in security groups and network ACLs, or add the VPC "
            "endpoints com.amazonaws.<region>.ecr.dkr, com.amazonaws.<region>.ecr.api and S3",
            _EGRESS,
        ),
        _C: (
            "Allow TCP 443 to {host} and storage.googleapis.com, or enable Private Google Access "
            "on the nodes' subnet: gcloud compute networks subnets describe <subnet> --region <region>",
            _EGRESS,
        ),
    },
    Code.TLS_HOSTNAME_MISMATCH: {
        _G: (
            "Use the host name the registry's certificate is issued for in the image reference",
            "Check that DNS points {host} at the registry and not at another service",
        ),
    },
    Code.FIREWALL_FORBIDDEN: {
        _G: (
            "Allow the cluster's egress IP in the registry's (or its firewall's) IP allow-list",
            "If the cluster's egress proxy refused the tunnel, allow the registry and its blob storage "
            "host on the proxy, or list them in NO_PROXY",
        ),
        _E: (
            "Check the repository policy for aws:SourceIp / aws:SourceVpce conditions: aws ecr "
            "get-repository-policy --repository-name {repository} --region <region>",
            "Check the VPC endpoint policy of com.amazonaws.<region>.ecr.dkr and the S3 endpoint",
        ),
        _C: (
            "Check VPC Service Controls perimeters around Artifact Registry: gcloud access-context-manager "
            "perimeters list --policy=<policy>",
            "If the cluster's egress proxy refused the tunnel, allow {host} and storage.googleapis.com on it",
        ),
    },
    Code.DATA_ENDPOINT_UNREACHABLE: {
        _G: (
            "Allow the host the registry redirects blob downloads to ({data_host}) in the cluster's "
            "egress rules (firewall, security groups, proxy allow-list), beside the registry's own host",
            "Ask the registry's operator which storage hosts serve its blobs (a CDN, an S3 bucket, a "
            "GCS bucket, a storage account) and allow all of them",
            "If an egress proxy carries the pull, allow {data_host} on it too, or list it in NO_PROXY",
        ),
        _E: (
            "ECR serves layers from S3: allow prod-<region>-starport-layer-bucket.s3.<region>.amazonaws.com "
            "(here {data_host}) in the egress rules",
            "In a VPC without internet access, ECR needs an S3 gateway endpoint beside the ecr.api and "
            "ecr.dkr interface endpoints: aws ec2 describe-vpc-endpoints --filters "
            "Name=service-name,Values=com.amazonaws.<region>.s3",
        ),
        _C: (
            "Allow the storage host blobs are redirected to (here {data_host}, e.g. storage.googleapis.com) "
            "in the egress rules; inside VPC Service Controls, the perimeter must allow Cloud Storage",
        ),
        _H: (
            "Docker Hub serves layers from production.cloudflare.docker.com (here {data_host}): allow it "
            "in the egress rules beside registry-1.docker.io and auth.docker.io",
        ),
    },
    Code.RATE_LIMITED: {
        _G: (
            "Authenticate pulls (anonymous pulls get the lowest limits): " + _SECRET,
            "Mirror the image into a registry you run, or use a pull-through cache",
            "Pull less often: imagePullPolicy: IfNotPresent and pinned tags",
        ),
        _H: (
            "Docker Hub limits anonymous pulls per IP address: authenticate: " + _HUB_SECRET,
            "Mirror the image into your own registry or a pull-through cache (e.g. an ECR, Artifact "
            "Registry or ACR cache rule for docker.io)",
            "Pull less often: imagePullPolicy: IfNotPresent and pinned tags",
        ),
        _E: (
            "Reduce pull frequency (imagePullPolicy: IfNotPresent) or request a higher ECR quota: "
            "aws service-quotas list-service-quotas --service-code ecr",
        ),
    },
    Code.REGISTRY_ERROR: {
        _G: (
            "Check the registry's status page or server logs",
            "Retry later; the failure is on the registry side",
        ),
        _E: (
            "Check the AWS Health Dashboard for ECR in the region: aws health describe-events "
            "--filter services=ECR",
            "Retry later; the failure is on the registry side",
        ),
        _C: (
            "Check https://status.cloud.google.com for Artifact Registry",
            "Retry later; the failure is on the registry side",
        ),
        _H: ("Check https://www.dockerstatus.com", "Retry later; the failure is on the registry side"),
    },
    Code.PULL_SECRET_NO_MATCH: {
        _G: (
            "Add a secret whose server is exactly {registry}: " + _SECRET,
            "Or fix the server of the existing secret: kubelet matches it against {registry} "
            "(host and port, no path)",
        ),
        _E: (
            "Add a secret for {registry}: " + _ECR_SECRET + " (the token lasts 12 hours)",
            "On EKS, let the nodes pull instead: aws iam attach-role-policy --role-name <node-role> "
            "--policy-arn arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
        ),
        _C: (
            "Add a secret for {registry} from a service account key: kubectl -n {namespace} create secret "
            "docker-registry <name> --docker-server={registry} --docker-username=_json_key "
            '--docker-password="$(cat key.json)"',
            "On GKE, let the nodes pull instead: " + _GAR_READER,
        ),
        _H: ("Docker Hub secrets use the server https://index.docker.io/v1/: " + _HUB_SECRET,),
    },
    Code.PULL_SECRET_STALE: {
        _G: (
            "Remove {secret} from the pod's spec.imagePullSecrets and its service account's "
            "imagePullSecrets: anonymous pull works without it",
            "Or fix it with current credentials: "
            + _SECRET.replace("<name>", "{secret}")
            + " --dry-run=client -o yaml | kubectl apply -f -",
            "Check the credentials by hand: docker login {registry}",
        ),
    },
    Code.AUTH_REQUIRED: {
        _G: (
            "Give the pod a pull secret: " + _SECRET,
            "Or add it to the service account: kubectl -n {namespace} patch serviceaccount default "
            '-p \'{{"imagePullSecrets": [{{"name": "<name>"}}]}}\'',
        ),
        _E: (
            "On EKS, let the nodes pull: aws iam attach-role-policy --role-name <node-role> "
            "--policy-arn arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
            "Elsewhere, a pull secret (the token lasts 12 hours): " + _ECR_SECRET,
        ),
        _C: (
            "On GKE, let the nodes' service account pull: " + _GAR_READER,
            "Elsewhere, a pull secret from a service account key: kubectl -n {namespace} create secret "
            "docker-registry <name> --docker-server={registry} --docker-username=_json_key "
            '--docker-password="$(cat key.json)"',
        ),
        _H: (
            "Docker Hub answers this for a private and for a missing repository alike: check "
            "https://hub.docker.com/r/{repository}",
            "For a private repository, a pull secret: " + _HUB_SECRET,
        ),
    },
    Code.CREDENTIALS_REJECTED: {
        _G: (
            "Check the user name and rotate the password or token at the registry; try it: "
            "docker login {registry}",
            "Recreate the pull secret with the current password: "
            + _SECRET
            + " --dry-run=client -o yaml | kubectl apply -f -",
        ),
        _E: (
            "ECR tokens expire after 12 hours: refresh the secret: "
            + _ECR_SECRET
            + " --dry-run=client -o yaml | kubectl apply -f -",
            "Better, let the node role or IRSA pull instead of a static secret",
        ),
        _C: (
            "Check the service account key still exists and is enabled: gcloud iam service-accounts "
            "keys list --iam-account=<service-account>",
            "Recreate the secret with a valid key (user _json_key) or a fresh token (user "
            "oauth2accesstoken, password $(gcloud auth print-access-token))",
        ),
        _H: (
            "Use a personal access token as the password (https://app.docker.com/settings); try it: "
            "docker login -u <user>",
            "Recreate the pull secret: " + _HUB_SECRET + " --dry-run=client -o yaml | kubectl apply -f -",
        ),
    },
    Code.PERMISSION_DENIED: {
        _G: (
            "Grant the user read (pull) access to {repository} in the registry's access settings",
            "Check with the same credentials: docker pull {registry}/{repository}:{tag}",
        ),
        _E: (
            "Allow ecr:BatchGetImage and ecr:GetDownloadUrlForLayer to the identity; check the "
            "repository policy: aws ecr get-repository-policy --repository-name {repository} "
            "--region <region>",
            "Check the node or IRSA role's policies: aws iam list-attached-role-policies --role-name <role>",
        ),
        _C: (
            "Grant roles/artifactregistry.reader on the repository: " + _GAR_READER,
            "Check who may read it: gcloud artifacts repositories get-iam-policy <repository> "
            "--location=<location>",
        ),
        _H: (
            "Ask the owner of {repository} to give your account (or its team) read access",
            "Check with the same account: docker pull {repository}:{tag}",
        ),
    },
    Code.IMAGE_NOT_FOUND: {
        _G: ("List the tags: " + _GENERIC_TAGS, "Check the image reference in the pod spec for typos"),
        _E: ("List the tags: " + _ECR_TAGS, "Check the image reference in the pod spec for typos"),
        _C: ("List the tags: " + _GAR_TAGS, "Check the image reference in the pod spec for typos"),
        _H: ("List the tags: " + _HUB_TAGS, "Check the image reference in the pod spec for typos"),
    },
    Code.REPOSITORY_NOT_FOUND: {
        _G: (
            "Check the repository exists (where the registry allows it): "
            "skopeo list-tags docker://{registry}/{repository} "
            "or curl https://{registry}/v2/_catalog",
            "Check the repository path in the image reference (namespaces, case)",
        ),
        _E: (
            "List repositories: aws ecr describe-repositories --region <region> "
            "--query 'repositories[].repositoryName'",
            "Check the repository path, and the account and region in {registry}",
        ),
        _C: (
            "List repositories: gcloud artifacts repositories list --location=<location>",
            "Check the project/repository path in the image reference",
        ),
        _H: (
            "Official images live under library/ (library/alpine); check https://hub.docker.com/r/{repository}",
            "Check the repository path in the image reference (namespaces, case)",
        ),
    },
    Code.TAG_NOT_FOUND: {
        _G: (
            "List the tags: " + _GENERIC_TAGS,
            "Push the tag or fix the reference; a deleted or purged tag also shows here",
        ),
        _E: (
            "List the tags: " + _ECR_TAGS,
            "Push the tag or fix the reference; a lifecycle policy may have expired it: aws ecr "
            "get-lifecycle-policy --repository-name {repository} --region <region>",
        ),
        _C: (
            "List the tags: " + _GAR_TAGS,
            "Push the tag or fix the reference; a cleanup policy may have deleted it",
        ),
        _H: ("List the tags: " + _HUB_TAGS, "Push the tag or fix the reference"),
    },
    Code.TAG_DELETED: {
        _G: (
            "Push the tag again, or pin the workload to the digest it runs: {repository}@{digest}",
            "Check the registry's retention or cleanup policy and the upstream project's tag removals",
        ),
        _E: (
            "Push the tag again, or pin the workload to the digest it runs: {repository}@{digest}",
            "A lifecycle policy may have expired it: aws ecr get-lifecycle-policy --repository-name "
            "{repository} --region <region>",
        ),
    },
}

# A local docker config file (`pullhealth check --docker-config`) is not a Secret: its
# problems are told as such.
DOCKER_CONFIG: Mapping[Code, CodeInfo] = {
    Code.PULL_SECRET_INVALID: CodeInfo(
        summary="the docker config file {secret} cannot be used: {detail}",
        remediation=(
            'Check that it is JSON with an "auths" object: python3 -m json.tool {secret}',
            "Write a fresh one: DOCKER_CONFIG=<dir> docker login {registry} (creates <dir>/config.json)",
        ),
    ),
    Code.PULL_SECRET_STALE: CodeInfo(
        summary="anonymous pull of {repository} works, but {registry} rejected {credential}: the "
        "entry for {registry} in the docker config file {secret} is stale",
        remediation=(
            "Log in again with current credentials: DOCKER_CONFIG=<dir of the file> docker login {registry}",
            "Or remove the entry (docker logout {registry}): anonymous pull works without it",
        ),
    ),
    Code.PULL_SECRET_NO_MATCH: CodeInfo(
        summary="the docker config file {secret} has no credentials for {registry}",
        remediation=(
            "Add them: DOCKER_CONFIG=<dir of the file> docker login {registry}",
            "Or check the server keys in it (host[:port] must match {registry}): "
            "python3 -c 'import json,sys; print(list(json.load(open(sys.argv[1]))[\"auths\"]))' {secret}",
        ),
    ),
}
SOURCE_DOCKER_CONFIG = "docker-config"


def _variant(code: Code, facts: Mapping[str, str | None]) -> CodeInfo:
    """The catalog entry, or the docker-config file's wording of it."""
    if facts.get("source") == SOURCE_DOCKER_CONFIG and code in DOCKER_CONFIG:
        return DOCKER_CONFIG[code]
    return code.info


def remediation_template(code: Code, kind: RegistryKind | None) -> tuple[str, ...]:
    """The remediation steps of ``code`` for a registry of ``kind`` (None: unknown, ACR's)."""
    if kind is None or kind is RegistryKind.ACR:
        return code.info.remediation
    by_kind = KIND_REMEDIATION.get(code, {})
    return by_kind.get(kind) or by_kind.get(RegistryKind.GENERIC) or code.info.remediation


def summary(code: Code, facts: Mapping[str, str | None]) -> str:
    """The rendered one-line summary of a code (its ACR case's, when the facts single one out)."""
    case = acr_case(code, facts)
    return render(case.info.summary if case else _variant(code, facts).summary, facts)


def remediation(code: Code, facts: Mapping[str, str | None]) -> list[str]:
    """The rendered remediation steps of a code, fitting the registry in ``facts``."""
    case = acr_case(code, facts)
    if case is not None:
        steps = case.info.remediation
    elif facts.get("source") == SOURCE_DOCKER_CONFIG and code in DOCKER_CONFIG:
        steps = DOCKER_CONFIG[code].remediation
    else:
        steps = remediation_template(code, registry_kind(facts.get("registry")))
    return [render(step, facts) for step in steps]


# Acronyms kept upper case in CamelCase reasons (Kubernetes style: DNSConfigForming).
_ACRONYMS = frozenset({"DNS", "TLS", "TCP", "HTTP", "ACR", "IMDS", "OK"})


def reason(code: Code | str) -> str:
    """The CamelCase condition/Event reason of a code (``TAG_NOT_FOUND`` -> ``TagNotFound``).

    Kubernetes API conventions want CamelCase reasons; the UPPER_SNAKE code stays in its
    own status field. ``OK`` becomes ``Healthy``.
    """
    value = str(code)
    if value == Code.OK.value:
        return "Healthy"
    return "".join(w if w in _ACRONYMS else w.capitalize() for w in value.split("_") if w) or "Unknown"
