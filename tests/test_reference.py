"""Image references are normalised the way Docker and kubelet do."""

from pathlib import Path

import pytest

from pullhealth.domain.reference import InvalidReference, parse, parse_target


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("index.docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
        ("myacr.azurecr.io/team/app:v1", "myacr.azurecr.io", "team/app", "v1", None),
        ("localhost:5000/app", "localhost:5000", "app", "latest", None),
        ("localhost/app:1", "localhost", "app", "1", None),
        ("registry.test:5443/a/b/c:x_y.z-1", "registry.test:5443", "a/b/c", "x_y.z-1", None),
        ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io", "o/r", None, "sha256:" + "a" * 64),
        ("h.io/r:t@sha256:" + "b" * 64, "h.io", "r", "t", "sha256:" + "b" * 64),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ],
)
def test_parse_normalises(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


def test_docker_hub_api_host_differs_from_reference_host() -> None:
    assert parse("nginx").api_host == "registry-1.docker.io"
    assert parse("myacr.azurecr.io/a").api_host == "myacr.azurecr.io"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Nginx", "lowercase"),
        ("myacr.azurecr.io/Team/app", "lowercase"),
        ("app:", "invalid tag"),
        ("a/b:c:d", "invalid repository"),
        ("https://myacr.azurecr.io/app", "scheme"),
        ("app@sha256:xyz", "invalid digest"),
        ("app with space", "white space"),
        ("a//b", "invalid repository"),
        ("x" * 300, "longer than"),
    ],
)
def test_invalid_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidReference, match=why):
        parse(text)


def test_parse_target_distinguishes_registry_host_from_image() -> None:
    assert parse_target("myacr.azurecr.io") == ("myacr.azurecr.io", None)
    assert parse_target("https://myacr.azurecr.io/") == ("myacr.azurecr.io", None)
    assert parse_target("localhost:5000") == ("localhost:5000", None)
    registry, image = parse_target("nginx:1")
    assert registry == "docker.io" and image is not None and image.tag == "1"


def test_hosts_ports_and_labels_are_validated_like_the_crd() -> None:
    import re

    import yaml

    from pullhealth.domain.reference import check_host, parse_target

    crd = yaml.safe_load((Path(__file__).resolve().parents[1] / "crds/registrychecks.pullhealth.io.yaml").read_text())
    pattern = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "registry"]["pattern"]
    cases = {
        "myacr.azurecr.io": True, "harbor.test:8443": True, "[fd00::1]:5000": True, "[fd00::1]": True,
        "h.test:65535": True, "h.test:1": True, "localhost:5000": True, "a." + "x" * 63: True,
        "h.test:65536": False, "h.test:99999": False, "h.test:0": False, "a." + "x" * 64: False,
        "a..b": False, "-a.test": False, "régistry.test": False, "h.test:": False,
    }
    for host, valid in cases.items():
        assert bool(re.search(pattern, host)) is valid, f"CRD pattern on {host!r}"
        try:
            check_host(host)
            ok = True
        except InvalidReference:
            ok = False
        assert ok is valid, f"parser on {host!r}"
    assert parse_target("[fd00::1]:5000/team/app:v1")[1].registry == "[fd00::1]:5000"  # type: ignore[union-attr]
    with pytest.raises(InvalidReference, match="punycode"):
        parse_target("régistry.test/app")
    with pytest.raises(InvalidReference, match="1-65535"):
        parse_target("h.test:99999/app")
