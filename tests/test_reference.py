"""Image references are normalised the way Docker and kubelet do."""

import pytest

from pullhealth.reference import InvalidReference, parse, parse_target


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
