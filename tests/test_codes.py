"""The code catalog is complete, renders without raising and names the exact codes."""

from pullhealth import codes
from pullhealth.codes import CATALOG, Code

EXPECTED = """
OK DNS_NXDOMAIN DNS_TIMEOUT PRIVATE_ENDPOINT_DNS CONNECT_REFUSED CONNECT_TIMEOUT PROXY_ERROR
TLS_UNTRUSTED TLS_HOSTNAME_MISMATCH TLS_PROTOCOL_ERROR DESTINATION_REFUSED FIREWALL_FORBIDDEN
CHALLENGE_ERROR RATE_LIMITED REGISTRY_ERROR PULL_SECRET_MISSING PULL_SECRET_INVALID PULL_SECRET_NO_MATCH
AUTH_REQUIRED CREDENTIALS_REJECTED IDENTITY_UNAVAILABLE IDENTITY_NOT_ALLOWED TOKEN_REALM_REFUSED
TOKEN_EXCHANGE_DENIED AAD_AUDIENCE_REJECTED PERMISSION_DENIED ACCESS_DENIED IMAGE_NOT_FOUND
REPOSITORY_NOT_FOUND TAG_NOT_FOUND
PLATFORM_NOT_FOUND INVALID_IMAGE_NAME UNKNOWN
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

    from pullhealth.docgen import codes_markdown

    path = Path(__file__).resolve().parents[1] / "docs" / "codes.md"
    assert path.read_text() == codes_markdown(), "regenerate: pullhealth codes > docs/codes.md"
