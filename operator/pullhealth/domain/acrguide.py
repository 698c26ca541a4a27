"""ACR's troubleshooting guide, case by case, mapped to pullhealth's codes.

docs/acr-guide.md is generated from :data:`GUIDE` (``python -m pullhealth.domain.acrguide >
docs/acr-guide.md``); tests/test_acr_guide.py fails when the file and this table differ,
when a row names a code, ACR case or test that does not exist, when an ACR case or an
``az acr check-health`` error of the catalog has no row, and when a log code's sample text
is not classified as its row says.
"""

from __future__ import annotations

from dataclasses import dataclass

from pullhealth.domain.codes import Code


@dataclass(frozen=True)
class Row:
    """One case of the guide.

    Attributes:
        guide: the guide's case, symptom, check-health error or log code.
        code: what pullhealth reports (None: outside the pull path, nothing to report).
        case: the ACR case of the code (codes.ACR_CASES) that carries the guide's remedy.
        evidence: what pullhealth decides it from.
        blind: what it cannot see from inside the cluster (the command that does).
        tests: ``path::function`` of the tests that show it.
        sample: for log codes, a text the classifier must give ``code`` for.
    """

    guide: str
    code: Code | None
    evidence: str
    blind: str
    tests: tuple[str, ...]
    case: str | None = None
    sample: str | None = None


_CASES = "tests/test_acr_cases.py::"
_CHAIN = "tests/test_chain.py::"
_GUIDE = "tests/test_acr_guide.py::"
_CLASSIFY = "tests/test_classify.py::"
_ARM = "ARM settings"

# The guide's cases: registry login, authentication and authorization, network access.
CASES: tuple[Row, ...] = (
    Row(
        "Registry name wrong or registry missing",
        Code.DNS_NXDOMAIN,
        "the resolver's NXDOMAIN for the login server",
        "whether the registry exists in another cloud or subscription (az acr show --name <registry>)",
        (_CHAIN + "test_path_failures",),
    ),
    Row(
        "Credentials not valid: admin user (user name = registry name)",
        Code.CREDENTIALS_REJECTED,
        "the token service's 401 for a user name equal to the registry's name",
        "adminUserEnabled and the current passwords (" + _ARM + ": az acr credential show)",
        (_CASES + "test_admin_user_rejected",),
        case="acr-admin",
    ),
    Row(
        "Credentials not valid: service principal (user name = application id), wrong or expired secret",
        Code.CREDENTIALS_REJECTED,
        "the token service's 401 for a GUID user name",
        "the secret's expiry in Entra ID (az ad app credential list --id <app-id>): ACR answers both alike",
        (_CASES + "test_service_principal_rejected_names_expired_vs_wrong",),
        case="acr-service-principal",
    ),
    Row(
        "Service principal secret expired (Azure AD AADSTS7000222) vs wrong (AADSTS7000215)",
        Code.IDENTITY_UNAVAILABLE,
        "Azure AD's error code in the message (credential provider, az aks check-acr)",
        "nothing more: Azure AD's code decides",
        (_GUIDE + "test_aadsts_codes_pick_the_case",),
        case="sp-secret-expired / sp-secret-wrong",
    ),
    Row(
        "az acr login --expose-token: user 00000000-0000-0000-0000-000000000000, token expired",
        Code.CREDENTIALS_REJECTED,
        "POST /oauth2/token refuses the refresh token",
        "when it was issued (refresh tokens last hours)",
        (_CASES + "test_expired_refresh_token",),
        case="acr-refresh-token",
    ),
    Row(
        "Repository-scoped token (az acr token) disabled, or its password expired",
        Code.CREDENTIALS_REJECTED,
        "the token service's 401 for a user name that is no registry name, GUID or refresh-token user",
        "the token's status and password expiry (az acr token show): ACR answers both like a wrong password",
        (_CASES + "test_disabled_token_gets_the_token_remedy",),
        case="acr-token",
    ),
    Row(
        "Repository-scoped token: scope map without the repository (wildcard rules)",
        Code.PERMISSION_DENIED,
        "the JWT access claim has no pull on the repository (empty)",
        "the scope map's rules (az acr scope-map show)",
        (_CASES + "test_scope_map_without_the_repository_is_an_empty_access_claim",),
        case="acr-token",
    ),
    Row(
        "unauthorized: Application not registered with AAD",
        Code.AAD_APP_NOT_REGISTERED,
        "the token service's 401 body (probes); the text (explain, pods)",
        "the tenant the application lives in (az ad sp show --id <app-id>)",
        (
            _CASES + "test_unknown_user_name_is_application_not_registered",
            _GUIDE + "test_explain_and_annotations",
        ),
    ),
    Row(
        "Credentials not authorized: AcrPull missing (RBAC registry)",
        Code.PERMISSION_DENIED,
        "the identity's token has an empty access claim, or /oauth2/exchange refuses it "
        "(TOKEN_EXCHANGE_DENIED)",
        "role assignments (az role assignment list --scope <registry-id>)",
        (_CHAIN + "test_identity_without_acrpull_is_denied",),
    ),
    Row(
        "RBAC role not working on an ABAC registry (Container Registry Repository Reader needed)",
        Code.PERMISSION_DENIED,
        "the same denial as above: the remedy names both modes and the command that tells them apart",
        "roleAssignmentMode (" + _ARM + ": az acr show --query roleAssignmentMode) and ABAC conditions",
        (
            _GUIDE + "test_permission_denied_names_abac_and_propagation",
            _CASES + "test_identity_without_pull_names_which_identity",
        ),
    ),
    Row(
        "Role assignment just granted (propagation delay)",
        Code.PERMISSION_DENIED,
        "the same denial: the remedy says it is expected for minutes and points at the recheck",
        "when the assignment was made (az role assignment list)",
        (_GUIDE + "test_permission_denied_names_abac_and_propagation",),
    ),
    Row(
        "pull access denied with anonymous pull enabled (stale credentials)",
        Code.PULL_SECRET_STALE,
        "credentials rejected, then one anonymous token request whose access claim grants pull",
        "anonymousPullEnabled (" + _ARM + "); the anonymous check answers it from the data plane",
        (
            _CASES + "test_anonymous_pull_works_so_the_rejected_secret_is_stale",
            _GUIDE + "test_cli_check_stale_secret",
        ),
    ),
    Row(
        "Managed identity: user-assigned identity not enabled on the node pool",
        Code.IDENTITY_UNAVAILABLE,
        "IMDS answers 'Identity not found' for the client id",
        "which identities the scale set has (az vmss identity show)",
        (_CASES + "test_identity_not_found_on_the_node",),
        case="imds-identity-not-found",
    ),
    Row(
        "Managed identity: system- vs user-assigned, the one kubelet uses has no pull",
        Code.PERMISSION_DENIED,
        "the kubelet identity's token is exchanged and has no pull (or the exchange refuses it)",
        "which identity has the role (az role assignment list --assignee <client-id>)",
        (_CASES + "test_identity_without_pull_names_which_identity",),
        case="acr-identity",
    ),
    Row(
        "Firewall: public IP not in the allowed rules (403, client IP in the body)",
        Code.FIREWALL_FORBIDDEN,
        "the 403 DENIED body names the client IP: a public address",
        "the rule set (az acr show --query networkRuleSet)",
        (_CASES + "test_public_client_ip_in_the_403_is_an_ip_rule",),
    ),
    Row(
        "Firewall: VNet service endpoint (private client IP in the 403)",
        Code.FIREWALL_FORBIDDEN,
        "the 403 DENIED body names a private client IP",
        "the subnet's service endpoints and the registry's subnet rules",
        (_CASES + "test_private_client_ip_in_the_403_is_a_service_endpoint",),
        case="vnet-service-endpoint",
    ),
    Row(
        "Private endpoint: login server resolves to a public address",
        Code.PRIVATE_ENDPOINT_DNS,
        "DNS answers (privatelink CNAME ending on a public address)",
        "the private DNS zone's VNet links (az network private-dns link vnet list)",
        (_CHAIN + "test_privatelink_leak_names_the_public_address",),
    ),
    Row(
        "Private endpoint: data endpoint <registry>.<region>.data.azurecr.io missing from the zone",
        Code.PRIVATE_ENDPOINT_DNS,
        "the login server resolves privately, the data endpoint's NXDOMAIN (spec.network.dataEndpoint)",
        "the registry's regions (az acr show-endpoints)",
        (_CASES + "test_data_endpoint_missing_from_the_private_zone",),
        case="data-endpoint-missing",
    ),
    Row(
        "Admin user disabled (CONNECTIVITY_REFRESH_TOKEN_ERROR ... Admin user is disabled)",
        Code.TOKEN_EXCHANGE_DENIED,
        "the text (az acr login's); for a pull secret naming the admin user, the token service's 401",
        "adminUserEnabled (" + _ARM + ")",
        (_GUIDE + "test_log_codes_and_messages", _CASES + "test_admin_user_rejected"),
        sample="CONNECTIVITY_REFRESH_TOKEN_ERROR. Access to registry was denied. Response code: 403. Unable "
        "to get admin user credentials with message: Admin user is disabled. Unable to authenticate "
        "using AAD or admin login credentials.",
    ),
    Row(
        "Azure AD tokens with the ARM audience disabled (authentication-as-arm)",
        Code.AAD_AUDIENCE_REJECTED,
        "/oauth2/exchange takes the ACR-audience token and refuses the ARM-audience one",
        "the registry's authentication-as-arm policy (az acr config authentication-as-arm show)",
        ("tests/test_trust.py::test_acr_audience_first_and_a_refused_arm_audience_is_named",),
    ),
    Row(
        "Workload identity: federated credential or client id wrong",
        Code.IDENTITY_UNAVAILABLE,
        "Azure AD's answer to the federated token exchange",
        "the federated credential's subject (az identity federated-credential list)",
        (_CHAIN + "test_workload_identity_wrong_client_is_identity_unavailable",),
    ),
    Row(
        "Client firewall or NSG blocks the registry or its data endpoint (no answer)",
        Code.CONNECT_TIMEOUT,
        "the TCP connect (or the TLS handshake) never completes",
        "which rule drops it (NSG flow logs, Azure Firewall logs)",
        (_CHAIN + "test_path_failures",),
    ),
    Row(
        "Client firewall allows the login server but not the data endpoint (dedicated data endpoint "
        "<registry>.<region>.data.azurecr.io, or the storage account *.blob.core.windows.net)",
        Code.DATA_ENDPOINT_UNREACHABLE,
        "a ranged GET of one small blob: the login server's 307 names the data host, whose DNS, TCP, "
        "TLS or HTTP (a storage firewall's 403) fails",
        "which rule drops it (Azure Firewall logs); the registry's other regions' data endpoints "
        "(az acr show-endpoints)",
        ("tests/test_datapath.py::test_acr_data_endpoint_refused_while_the_login_server_works",),
    ),
    Row(
        "Egress proxy refuses the registry, wants credentials, or is down",
        Code.PROXY_ERROR,
        "the CONNECT tunnel's answer (403, 407) or the proxy's own connect",
        "the proxy's allow-list",
        ("tests/test_proxy.py::test_proxy_refusing_connect_is_proxy_error",
         "tests/test_proxy.py::test_proxy_down_is_proxy_error"),
    ),
    Row(
        "TLS inspection or an untrusted certificate on the path",
        Code.TLS_UNTRUSTED,
        "the certificate's issuer in the TLS handshake",
        "-",
        (_CHAIN + "test_untrusted_reports_the_issuer",),
    ),
    Row(
        "Registry throttling (429)",
        Code.RATE_LIMITED,
        "a 429 with Retry-After on any request",
        "the SKU's limits (az acr show --query sku)",
        (_CHAIN + "test_path_failures",),
    ),
    Row(
        "login attempt failed with status: 403 Forbidden",
        Code.ACCESS_DENIED,
        "the text (candidates FIREWALL_FORBIDDEN, PERMISSION_DENIED); the probes decide",
        "nothing more once probed",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="Error response from daemon: login attempt failed with status: 403 Forbidden",
    ),
)

# The registry's log codes (OCI error codes in ACR's answers).
LOG_CODES: tuple[Row, ...] = (
    Row(
        "UNAUTHORIZED (authentication required)",
        Code.AUTH_REQUIRED,
        "the text; probes tell no credentials / rejected / stale secret / unknown application",
        "nothing more once probed",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="unauthorized: authentication required, visit https://aka.ms/acr/authorization "
        "for more information.",
    ),
    Row(
        "UNAUTHORIZED (bare)",
        Code.ACCESS_DENIED,
        "the text is coarse; probes refine it",
        "nothing more once probed",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="UNAUTHORIZED",
    ),
    Row(
        "DENIED (requested access to the resource is denied)",
        Code.ACCESS_DENIED,
        "the text is coarse; the access claim tells PERMISSION_DENIED",
        "nothing more once probed",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="denied: requested access to the resource is denied",
    ),
    Row(
        "DENIED (client with IP ... is not allowed access)",
        Code.FIREWALL_FORBIDDEN,
        "the client IP in the text (private: vnet-service-endpoint)",
        "the rule set",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="denied: client with IP '203.0.113.7' is not allowed access. Refer "
        "https://aka.ms/acr/firewall to grant access.",
    ),
    Row(
        "NAME_UNKNOWN",
        Code.REPOSITORY_NOT_FOUND,
        "the text; the manifest request",
        "nothing",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="name unknown: repository name not known to registry",
    ),
    Row(
        "MANIFEST_UNKNOWN (tag named)",
        Code.TAG_NOT_FOUND,
        "ACR names the tag when the repository exists",
        "nothing",
        (_GUIDE + "test_log_codes_and_messages",),
        sample='manifest unknown: manifest tagged by "v9" is not found',
    ),
    Row(
        "MANIFEST_UNKNOWN (bare)",
        Code.IMAGE_NOT_FOUND,
        "the text is coarse; the manifest request tells repository from tag",
        "nothing more once probed",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="MANIFEST_UNKNOWN",
    ),
    Row(
        "TOOMANYREQUESTS",
        Code.RATE_LIMITED,
        "the text; a 429 (with Retry-After) to any request",
        "the registry's throttling limits (SKU)",
        (_GUIDE + "test_log_codes_and_messages",),
        sample="toomanyrequests: too many requests",
    ),
)

# az acr check-health's errors: the first list maps to codes; the second checks the machine
# running az (Docker, Helm, the CLI), not the cluster's pull path.
_HEALTH_TEST = (_GUIDE + "test_check_health_errors",)
CHECK_HEALTH: tuple[Row, ...] = (
    Row("CONNECTIVITY_DNS_ERROR", Code.DNS_NXDOMAIN,
        "DNS answers (also DNS_TIMEOUT, PRIVATE_ENDPOINT_DNS)", "-", _HEALTH_TEST),
    Row("CONNECTIVITY_FORBIDDEN_ERROR", Code.FIREWALL_FORBIDDEN,
        "the challenge's 403 and its client IP", "the rule set", _HEALTH_TEST),
    Row("CONNECTIVITY_CHALLENGE_ERROR", Code.CHALLENGE_ERROR, "GET /v2/'s answer", "-", _HEALTH_TEST),
    Row("CONNECTIVITY_AAD_LOGIN_ERROR", Code.AUTH_REQUIRED,
        "the challenge and the identity endpoints", "-", _HEALTH_TEST),
    Row("CONNECTIVITY_REFRESH_TOKEN_ERROR", Code.TOKEN_EXCHANGE_DENIED,
        "POST /oauth2/exchange's answer", "role assignments", _HEALTH_TEST),
    Row("CONNECTIVITY_ACCESS_TOKEN_ERROR", Code.PERMISSION_DENIED,
        "the token's access claim", "role assignments", _HEALTH_TEST),
    Row("CONNECTIVITY_SSL_ERROR", Code.TLS_UNTRUSTED,
        "the TLS handshake (also TLS_HOSTNAME_MISMATCH, ...)", "-", _HEALTH_TEST),
    Row("CONNECTIVITY_TOOMANYREQUESTS_ERROR", Code.RATE_LIMITED, "a 429", "-", _HEALTH_TEST),
)
CHECK_HEALTH_ELSEWHERE = (
    "DOCKER_COMMAND_ERROR",
    "DOCKER_DAEMON_ERROR",
    "DOCKER_VERSION_ERROR",
    "DOCKER_PULL_ERROR",
    "HELM_COMMAND_ERROR",
    "HELM_VERSION_ERROR",
    "NOTARY_VERSION_ERROR",
    "CMK_ERROR",
    "LOGIN_SERVER_ERROR",
)

# The guides' checklists (causes of a failed login; network settings to check), each item
# with the code it first shows up as; the cases above split them further.
_SEE = "see Cases: "
CHECKLIST: tuple[Row, ...] = (
    Row("Registry name incorrect or registry missing", Code.DNS_NXDOMAIN, _SEE + "registry name",
        "-", (_CHAIN + "test_path_failures",)),
    Row("Credentials not valid", Code.CREDENTIALS_REJECTED,
        _SEE + "admin user, service principal, repository-scoped token, Application not registered",
        "-", (_CASES + "test_disabled_token_gets_the_token_remedy",
              _CASES + "test_unknown_user_name_is_application_not_registered")),
    Row("Credentials not authorized for pull", Code.PERMISSION_DENIED,
        _SEE + "AcrPull / ABAC / propagation / scope map / which identity", "roleAssignmentMode",
        (_CASES + "test_identity_without_pull_names_which_identity",
         _CASES + "test_scope_map_without_the_repository_is_an_empty_access_claim")),
    Row("Credentials expired", Code.CREDENTIALS_REJECTED,
        _SEE + "token password, service principal secret (AADSTS7000222), refresh token",
        "expiry dates (Entra ID, az acr token show)",
        (_CASES + "test_expired_refresh_token", _GUIDE + "test_aadsts_codes_pick_the_case")),
    Row("Stale credentials on an anonymously pullable repository", Code.PULL_SECRET_STALE,
        _SEE + "anonymous pull", "-",
        (_CASES + "test_anonymous_pull_works_so_the_rejected_secret_is_stale",)),
    Row("Client firewall access (registry and data endpoints)", Code.CONNECT_TIMEOUT,
        _SEE + "client firewall or NSG", "the rule that drops it", (_CHAIN + "test_path_failures",)),
    Row("Public network access / IP rules", Code.FIREWALL_FORBIDDEN, _SEE + "firewall: public IP",
        "the rule set", (_CASES + "test_public_client_ip_in_the_403_is_an_ip_rule",)),
    Row("Virtual network access (service endpoint)", Code.FIREWALL_FORBIDDEN,
        _SEE + "firewall: VNet service endpoint", "subnet settings",
        (_CASES + "test_private_client_ip_in_the_403_is_a_service_endpoint",), case="vnet-service-endpoint"),
    Row("Private endpoint DNS (login server and data endpoints)", Code.PRIVATE_ENDPOINT_DNS,
        _SEE + "private endpoint", "zone links",
        (_CHAIN + "test_privatelink_leak_names_the_public_address",
         _CASES + "test_data_endpoint_missing_from_the_private_zone")),
    Row("Egress proxy", Code.PROXY_ERROR, _SEE + "egress proxy", "the proxy's allow-list",
        ("tests/test_proxy.py::test_proxy_refusing_connect_is_proxy_error",)),
)

GUIDE: tuple[Row, ...] = CASES + LOG_CODES + CHECK_HEALTH + CHECKLIST

HEADER = """# The ACR troubleshooting guide, case by case

Generated from `operator/pullhealth/domain/acrguide.py` by `python -m pullhealth.domain.acrguide >
docs/acr-guide.md`; tests/test_acr_guide.py fails when this file and the table differ, or when a
row names a code, ACR case or test that does not exist. Each case of Azure Container Registry's
login, authentication and network troubleshooting guides, its log codes, its checklist and its
`az acr check-health` errors, with the pullhealth code it gets (`pullhealth check`, `pullhealth
explain`, RegistryCheck status and pod annotations alike), the ACR case whose remedy replaces the
code's generic one ([codes.md](codes.md)), the evidence used, and what cannot be seen from inside
the cluster (ARM settings such as `roleAssignmentMode` need `az`: the remedy names the command).
"""


def _cell(text: str) -> str:
    """A table cell: pipes escaped, <placeholders> shown (not read as HTML tags)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(row: Row) -> str:
    if row.code is None:
        return "-"
    case = f" (`{row.case}`)" if row.case else ""
    return f"[{row.code.value}](codes.md#{row.code.value.lower()}){case}"


def _table(rows: tuple[Row, ...], first: str) -> list[str]:
    out = [
        f"| {first} | code (ACR case) | evidence | cannot see from the cluster | test |\n",
        "|---|---|---|---|---|\n",
    ]
    for row in rows:
        tests = "<br>".join(f"`{t}`" for t in row.tests)
        out.append(
            f"| {_cell(row.guide)} | {_code(row)} | {_cell(row.evidence)} | {_cell(row.blind)} | {tests} |\n"
        )
    return out


def acr_guide_markdown() -> str:
    """docs/acr-guide.md."""
    out = [HEADER, "\n## Cases\n\n", *_table(CASES, "guide case")]
    out += ["\n## Log codes\n\n", *_table(LOG_CODES, "log code")]
    out += ["\n## Checklist\n\n", *_table(CHECKLIST, "checklist item")]
    out += ["\n## az acr check-health errors\n\n", *_table(CHECK_HEALTH, "error")]
    out.append(
        "\nNot about the pull path (they check the machine running `az`: Docker, Helm, the CLI, "
        "the registry's encryption key): "
        + ", ".join(f"`{e}`" for e in CHECK_HEALTH_ELSEWHERE)
        + ". `pullhealth explain` gives them UNKNOWN rather than invent a cause.\n"
    )
    return "".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(acr_guide_markdown(), end="")
