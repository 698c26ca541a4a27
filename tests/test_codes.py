"""The code catalog is complete, renders without raising and names the exact codes."""

from pullhealth.domain import codes
from pullhealth.domain.codes import CATALOG, Code

EXPECTED = """
OK DNS_NXDOMAIN DNS_TIMEOUT PRIVATE_ENDPOINT_DNS CONNECT_REFUSED CONNECT_TIMEOUT PROXY_ERROR
TLS_UNTRUSTED TLS_HOSTNAME_MISMATCH TLS_PROTOCOL_ERROR DESTINATION_REFUSED FIREWALL_FORBIDDEN
DATA_ENDPOINT_UNREACHABLE CHALLENGE_ERROR RATE_LIMITED REGISTRY_ERROR PULL_SECRET_MISSING PULL_SECRET_INVALID PULL_SECRET_NO_MATCH
PULL_SECRET_STALE AUTH_REQUIRED CREDENTIALS_REJECTED AAD_APP_NOT_REGISTERED IDENTITY_UNAVAILABLE IDENTITY_NOT_ALLOWED TOKEN_REALM_REFUSED
TOKEN_EXCHANGE_DENIED AAD_AUDIENCE_REJECTED PERMISSION_DENIED ACCESS_DENIED IMAGE_NOT_FOUND
REPOSITORY_NOT_FOUND TAG_NOT_FOUND
PLATFORM_NOT_FOUND INVALID_IMAGE_NAME PULL_QPS_EXCEEDED PULL_TIMED_OUT NODE_DISK_FULL IMAGE_SIGNATURE_REJECTED
TAG_DELETED TAG_MOVED UNKNOWN
""".split()


def test_exact_code_names() -> None:
    assert [c.value for c in Code] == EXPECTED


def test_every_problem_code_has_summary_and_remediation() -> None:
    for code in Code:
        info = CATALOG[code]
        assert info.summary
        if code is not Code.OK:
            assert info.remediation, code


def test_only_the_coarse_codes_are_coarse() -> None:
    assert {c for c in Code if c.info.coarse} == {Code.ACCESS_DENIED, Code.IMAGE_NOT_FOUND}


def test_render_fills_known_and_marks_missing_placeholders() -> None:
    text = codes.summary(Code.TAG_NOT_FOUND, {"repository": "team/app", "registry": "r.io"})
    assert text == "repository team/app on r.io has no tag or digest <tag>"


def test_remediation_renders_escaped_braces() -> None:
    steps = codes.remediation(Code.PULL_SECRET_INVALID, {"secret": "regcred", "namespace": "ns"})
    assert any("{.type}" in s for s in steps)
    assert all("regcred" in s or "{.type}" in s for s in steps)


def test_check_health_errors_are_named_where_they_exist() -> None:
    assert Code.FIREWALL_FORBIDDEN.info.check_health_error == "CONNECTIVITY_FORBIDDEN_ERROR"
    assert Code.DNS_NXDOMAIN.info.check_health_error == "CONNECTIVITY_DNS_ERROR"


def test_docs_codes_md_is_generated_from_the_catalog() -> None:
    from pathlib import Path

    from pullhealth.domain.codedocs import codes_markdown

    path = Path(__file__).resolve().parents[1] / "docs" / "codes.md"
    assert path.read_text() == codes_markdown(), "regenerate: pullhealth codes > docs/codes.md"


def test_registry_kinds() -> None:
    kind = codes.registry_kind
    assert kind("myacr.azurecr.io") is codes.RegistryKind.ACR
    assert kind("MyACR.azurecr.cn:443") is codes.RegistryKind.ACR
    assert kind("123456789012.dkr.ecr.eu-west-1.amazonaws.com") is codes.RegistryKind.ECR
    assert kind("europe-west1-docker.pkg.dev") is codes.RegistryKind.GCR
    assert kind("gcr.io") is codes.RegistryKind.GCR and kind("eu.gcr.io") is codes.RegistryKind.GCR
    assert kind("registry-1.docker.io") is codes.RegistryKind.DOCKER_HUB
    assert kind("docker.io") is codes.RegistryKind.DOCKER_HUB
    assert kind("harbor.example.com:8443") is codes.RegistryKind.GENERIC
    assert kind("[fd00::1]:5000") is codes.RegistryKind.GENERIC
    assert kind("notazurecr.io.example.com") is codes.RegistryKind.GENERIC
    assert kind(None) is None and kind("") is None


# Azure by nature: only an ACR or an Azure identity gets these codes; the egress proxy is
# the cluster's (AKS's httpProxyConfig), whatever the registry.
_AZURE_ONLY = {Code.PRIVATE_ENDPOINT_DNS, Code.IDENTITY_UNAVAILABLE, Code.TOKEN_EXCHANGE_DENIED, Code.PROXY_ERROR,
               Code.AAD_AUDIENCE_REJECTED, Code.AAD_APP_NOT_REGISTERED}
_REGISTRIES = {
    "harbor.example.com": ("kubectl", "docker", "skopeo", "curl"),
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com": ("aws ",),
    "europe-west1-docker.pkg.dev": ("gcloud",),
    "registry-1.docker.io": ("index.docker.io", "hub.docker.com", "docker "),
}


def test_remediation_fits_the_registry_kind() -> None:
    for code in Code:
        if code in _AZURE_ONLY:
            continue
        for registry in _REGISTRIES:
            facts = {"registry": registry, "host": registry, "repository": "team/app", "tag": "v1"}
            steps = codes.remediation(code, facts)
            text = " ".join(steps)
            assert "az " not in text and "azurecr" not in text and "AKS" not in text, (code, registry, steps)
    # The kind's own tools where the advice depends on the registry.
    for code in (Code.AUTH_REQUIRED, Code.CREDENTIALS_REJECTED, Code.PERMISSION_DENIED, Code.TAG_NOT_FOUND,
                 Code.REPOSITORY_NOT_FOUND, Code.PULL_SECRET_NO_MATCH):
        for registry, tools in _REGISTRIES.items():
            text = " ".join(codes.remediation(code, {"registry": registry, "repository": "team/app"}))
            assert any(tool in text for tool in tools), (code, registry, text)
    # ACR, and a message naming no registry, keep the az advice.
    assert "az acr" in " ".join(codes.remediation(Code.TAG_NOT_FOUND, {"registry": "myacr.azurecr.io"}))
    assert "az acr" in " ".join(codes.remediation(Code.TAG_NOT_FOUND, {}))
    # Docker Hub's rate limit names Docker Hub's server for the secret.
    assert "https://index.docker.io/v1/" in " ".join(codes.remediation(Code.RATE_LIMITED, {"registry": "docker.io"}))


def test_a_docker_config_file_is_not_called_a_secret() -> None:
    facts = {"secret": "/home/me/config.json", "registry": "r.example", "detail": "not JSON",
             "source": codes.SOURCE_DOCKER_CONFIG}
    for code in (Code.PULL_SECRET_INVALID, Code.PULL_SECRET_NO_MATCH):
        summary = codes.summary(code, facts)
        assert summary.startswith("the docker config file /home/me/config.json"), summary
        steps = " ".join(codes.remediation(code, facts))
        assert "create secret" not in steps and "docker login" in steps, steps
