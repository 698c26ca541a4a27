"""The message classifier puts kubelet / runtime text under the right code.

The parametrized cases here cover the message *shapes* (prefixes, aggregation,
back-off). The corpus test below replays real recorded containerd output
(tests/data/containerd_messages.jsonl, see tests/corpus/README.md) and messages quoted in
public bug reports (tests/data/public_messages.jsonl, each with its source).
"""

import json
from pathlib import Path

import pytest

from pullhealth.domain.classify import classify, reached
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import Layer

DATA = Path(__file__).parent / "data"
REF = "myacr.azurecr.io/team/app:v1"
CORE = (
    f'failed to pull and unpack image "{REF}": failed to resolve reference "{REF}": '
    'failed to do request: Head "https://myacr.azurecr.io/v2/team/app/manifests/v1": '
    "dial tcp: lookup myacr.azurecr.io on 10.0.0.10:53: no such host"
)


@pytest.mark.parametrize(
    "text",
    [
        CORE,
        f'Failed to pull image "{REF}": {CORE}',
        f'Failed to pull image "{REF}": rpc error: code = Unknown desc = {CORE}',
        f"[rpc error: code = Unknown desc = {CORE}, rpc error: code = Unknown desc = {CORE}]",
        f'Back-off pulling image "{REF}": ErrImagePull: {CORE}',
    ],
)
def test_wrappings_do_not_change_the_code(text: str) -> None:
    diagnosis = classify(text)
    assert diagnosis.code is Code.DNS_NXDOMAIN
    assert diagnosis.facts["registry"] == "myacr.azurecr.io"
    assert "myacr.azurecr.io" in diagnosis.summary


def test_backoff_without_previous_error_is_unknown_and_says_so() -> None:
    diagnosis = classify(f'Back-off pulling image "{REF}"')
    assert diagnosis.code is Code.UNKNOWN
    assert "backing off" in diagnosis.summary


def test_pull_access_denied_is_coarse_with_candidates() -> None:
    diagnosis = classify(
        'Failed to pull image "private/app": rpc error: code = Unknown desc = Error response from '
        "daemon: pull access denied for private/app, repository does not exist or may require "
        "'docker login': denied: requested access to the resource is denied"
    )
    assert diagnosis.code is Code.ACCESS_DENIED
    assert {Code.AUTH_REQUIRED, Code.CREDENTIALS_REJECTED, Code.REPOSITORY_NOT_FOUND} <= set(
        diagnosis.candidates
    )


def test_containerd_not_found_is_coarse_image_not_found() -> None:
    diagnosis = classify(
        f'failed to pull and unpack image "{REF}": failed to resolve reference "{REF}": {REF}: not found'
    )
    assert diagnosis.code is Code.IMAGE_NOT_FOUND
    assert set(diagnosis.candidates) == {Code.REPOSITORY_NOT_FOUND, Code.TAG_NOT_FOUND}


def test_aggregate_prefers_the_precise_cause() -> None:
    text = (
        f'[failed to pull and unpack image "{REF}": failed to resolve reference "{REF}": '
        f"unexpected status from HEAD request to https://myacr.azurecr.io/v2/team/app/manifests/v1: "
        f'401 Unauthorized, failed to pull and unpack image "{REF}": failed to resolve reference '
        f'"{REF}": failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized]'
    )
    diagnosis = classify(text)
    assert diagnosis.code is Code.CREDENTIALS_REJECTED
    assert Code.ACCESS_DENIED in diagnosis.candidates


def test_aggregate_a_registry_answer_beats_another_paths_transport_failure() -> None:
    # containerd tried a mirror (timed out) and then the registry (a precise answer)
    mirror = (
        f'failed to pull and unpack image "{REF}": failed to resolve reference "{REF}": failed to do '
        'request: Head "https://mirror.local/v2/team/app/manifests/v1": dial tcp 10.1.2.3:443: i/o timeout'
    )
    upstream = (
        f'failed to pull and unpack image "{REF}": failed to resolve reference "{REF}": '
        'reading manifest v1 in myacr.azurecr.io/team/app: name unknown: repository name not known to registry'
    )
    diagnosis = classify(f"[{mirror}, {upstream}]")
    assert diagnosis.code is Code.REPOSITORY_NOT_FOUND
    assert Code.CONNECT_TIMEOUT in diagnosis.candidates
    # a coarse registry answer still beats a transport failure
    coarse = classify(f"[{mirror}, {REF}: pull access denied, repository does not exist or may require "
                      "authorization: server message: insufficient_scope: authorization failed]")
    assert coarse.code is Code.ACCESS_DENIED


def test_containers_image_aggregate_is_split() -> None:
    text = (
        "Error: 2 errors occurred while pulling:\n * initializing source docker://a.io/x:1: dial tcp "
        "10.0.0.1:443: connect: connection refused\n * initializing source docker://b.io/x:1: reading "
        "manifest 1 in b.io/x: manifest unknown: manifest unknown"
    )
    assert classify(text).code is Code.IMAGE_NOT_FOUND
    assert Code.CONNECT_REFUSED in classify(text).candidates


@pytest.mark.parametrize(
    ("text", "code"),
    [
        # a bare 403 decides by registry: ACR's firewall only on an ACR host
        ('failed to resolve reference "myacr.azurecr.io/a:1": unexpected status from HEAD request to '
         "https://myacr.azurecr.io/v2/a/manifests/1: 403 Forbidden", Code.FIREWALL_FORBIDDEN),
        ('failed to copy: httpReadSeeker: failed open: unexpected status code https://myacr.westeurope.'
         "data.azurecr.io/v2/a/blobs/sha256:ab: 403 Forbidden", Code.FIREWALL_FORBIDDEN),
        ('failed to resolve reference "1234.dkr.ecr.eu-west-1.amazonaws.com/a:1": unexpected status from '
         "HEAD request to https://1234.dkr.ecr.eu-west-1.amazonaws.com/v2/a/manifests/1: 403 Forbidden",
         Code.PERMISSION_DENIED),
        ('Error response from daemon: Head "https://quay.io/v2/org/a/manifests/1": Forbidden',
         Code.PERMISSION_DENIED),
        # a 403 from the blob storage/CDN host: an egress firewall or proxy
        ('failed to copy: httpReadSeeker: failed open: unexpected status code https://prod-registry-'
         "k8s-io-eu-west-1.s3.dualstack.eu-west-1.amazonaws.com/containers/images/sha256:ab: 403 Forbidden",
         Code.FIREWALL_FORBIDDEN),
        # proxies
        ('failed to do request: Head "https://r.io/v2/a/manifests/1": proxyconnect tcp: dial tcp: '
         "lookup proxy.corp on 10.0.0.10:53: no such host", Code.PROXY_ERROR),
        ("Get https://r.io/v2/: Proxy Authentication Required", Code.PROXY_ERROR),
        ('Head "https://r.io/v2/a/manifests/1": proxyconnect tcp: Forbidden', Code.PROXY_ERROR),
        # expired credentials
        ("denied: Your authorization token has expired. Reauthenticate and try again.",
         Code.CREDENTIALS_REJECTED),
        # cloud IAM
        ('denied: Permission "artifactregistry.repositories.downloadArtifacts" denied on resource '
         '"projects/p/locations/us/repositories/r" (or it may not exist)', Code.PERMISSION_DENIED),
        ("denied: Token exchange failed for project 'p'. Caller does not have permission "
         "'storage.buckets.get'. To configure permissions, follow instructions at: "
         "https://cloud.google.com/container-registry/docs/access-control", Code.PERMISSION_DENIED),
        ('Head "https://ghcr.io/v2/o/a/manifests/1": denied: permission_denied: The token provided does '
         "not match expected scopes.", Code.PERMISSION_DENIED),
        ('Error response from daemon: Get "https://registry-1.docker.io/v2/": Service Unavailable',
         Code.REGISTRY_ERROR),
        # plain HTTP against TLS, both directions
        ('Get "https://r.io:5000/v2/": http: server gave HTTP response to HTTPS client', Code.TLS_PROTOCOL_ERROR),
        ('Get "http://r.io:443/v2/": malformed HTTP response "\\x15\\x03\\x01\\x00\\x02\\x02"',
         Code.TLS_PROTOCOL_ERROR),
    ],
)
def test_registry_and_runtime_aware_rules(text: str, code: Code) -> None:
    assert classify(text).code is code


def test_plain_http_directions_are_named_apart() -> None:
    served = classify('Get "https://r.io/v2/": http: server gave HTTP response to HTTPS client')
    sent = classify('Get "http://r.io:443/v2/": malformed HTTP response "\\x15\\x03\\x01"')
    assert "nothing speaks TLS" in served.summary
    assert "plain HTTP was sent to a port that speaks TLS" in sent.summary


def test_reset_during_the_handshake_names_a_middlebox() -> None:
    diagnosis = classify('Get "https://r.io/v2/": read tcp 10.0.0.5:5555->1.2.3.4:443: read: connection reset by peer')
    assert diagnosis.code is Code.FIREWALL_FORBIDDEN
    assert "firewall, DPI or TLS-inspecting proxy" in diagnosis.summary
    assert reached('read tcp 10.0.0.5:5555->1.2.3.4:443: read: connection reset by peer') is Layer.TLS


def test_reached_tells_how_far_the_node_got() -> None:
    assert reached("dial tcp: lookup r.io on 10.0.0.10:53: no such host") is Layer.DNS
    assert reached("dial tcp 1.2.3.4:443: connect: connection refused") is Layer.TCP
    assert reached("x509: certificate signed by unknown authority") is Layer.TLS
    assert reached("toomanyrequests: You have reached your pull rate limit") is Layer.HTTP
    assert reached("failed to fetch anonymous token: unexpected status: 401 Unauthorized") is Layer.TOKEN
    assert reached("manifest unknown: manifest unknown") is Layer.MANIFEST
    assert reached("Unable to retrieve some image pull secrets (regcred)") is None
    assert reached("something odd") is None


def test_acr_firewall_text_names_the_client_ip() -> None:
    diagnosis = classify(
        'Error response from daemon: Get "https://myacr.azurecr.io/v2/": denied: client with IP '
        "'203.0.113.7' is not allowed access. Refer https://aka.ms/acr/firewall to grant access."
    )
    assert diagnosis.code is Code.FIREWALL_FORBIDDEN
    assert "203.0.113.7" in diagnosis.summary


def test_invalid_image_name_from_kubelet() -> None:
    diagnosis = classify(
        'Failed to apply default image tag "Nginx:latest": couldn\'t parse image name '
        '"Nginx:latest": invalid reference format: repository name must be lowercase'
    )
    assert diagnosis.code is Code.INVALID_IMAGE_NAME


def test_check_health_error_names_map_back() -> None:
    assert classify("CONNECTIVITY_FORBIDDEN_ERROR").code is Code.FIREWALL_FORBIDDEN


def test_empty_and_unknown_text() -> None:
    assert classify("").code is Code.UNKNOWN
    assert classify("something odd happened").code is Code.UNKNOWN


def _corpus() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name in ("containerd_messages.jsonl", "public_messages.jsonl"):
        path = DATA / name
        if path.exists():
            rows.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    # Successful pulls are recorded as controls; they are not error text to classify.
    return [r for r in rows if r["code"] != "OK"]


CORPUS = _corpus()


def test_corpus_is_present_and_large() -> None:
    assert len(CORPUS) >= 40, "tests/data corpus missing: run tests/corpus/record.py"


@pytest.mark.parametrize("row", CORPUS, ids=[f"{r.get('code')}-{i}" for i, r in enumerate(CORPUS)])
def test_corpus_message_gets_its_code(row: dict[str, object]) -> None:
    diagnosis = classify(str(row["text"]))
    assert diagnosis.code.value == row["code"], row.get("source")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        # containerd 1.7 / 2.x phrasing (status line names the request)
        ('failed to resolve reference "r.io/a:1": unexpected status from HEAD request to '
         "https://r.io/v2/a/manifests/1: 401 Unauthorized", Code.ACCESS_DENIED),
        ('failed to resolve reference "r.io/a:1": failed to authorize: failed to fetch anonymous token: '
         "unexpected status from GET request to https://auth.r.io/token?scope=x: 401 Unauthorized",
         Code.AUTH_REQUIRED),
        ('failed to resolve reference "r.io/a:1": failed to authorize: failed to fetch oauth token: '
         "unexpected status from POST request to https://r.io/oauth2/token: 401 Unauthorized",
         Code.CREDENTIALS_REJECTED),
        ('failed to pull and unpack image "docker.io/library/nosuch:latest": failed to resolve image: '
         "docker.io/library/nosuch:latest: not found", Code.IMAGE_NOT_FOUND),
        # ACR
        ('Error response from daemon: manifest for myacr.azurecr.io/app:v2 not found: manifest unknown: '
         'manifest tagged by "v2" is not found', Code.TAG_NOT_FOUND),
        ('Head "https://myacr.azurecr.io/v2/app/manifests/v1": unauthorized: authentication required, '
         "visit https://aka.ms/acr/authorization for more information.", Code.AUTH_REQUIRED),
        # CRI-O
        ('pinging container registry r.io: Get "https://r.io/v2/": dial tcp: lookup r.io: no such host',
         Code.DNS_NXDOMAIN),
        ('reading manifest v1 in r.io/a: name unknown: repository name not known to registry',
         Code.REPOSITORY_NOT_FOUND),
        ('choosing an image from manifest list docker://r.io/a:1: no image found in manifest list for '
         "architecture amd64, variant \"\", OS linux", Code.PLATFORM_NOT_FOUND),
        ('pinging container registry r.io: Get "https://r.io/v2/": proxyconnect tcp: dial tcp 10.0.0.9:3128: '
         "connect: connection refused", Code.PROXY_ERROR),
        ("reading manifest v1 in 1234.dkr.ecr.us-east-1.amazonaws.com/a: denied: Your authorization token has "
         "expired. Reauthenticate and try again.", Code.CREDENTIALS_REJECTED),
        # containerd 2.x
        ('failed to resolve reference "quay.io/org/a:1": unexpected status from HEAD request to '
         "https://quay.io/v2/org/a/manifests/1: 403 Forbidden", Code.PERMISSION_DENIED),
        ('failed to resolve reference "r.io/a:1": failed to do request: Head "https://r.io/v2/a/manifests/1": '
         "proxyconnect tcp: Proxy Authentication Required", Code.PROXY_ERROR),
        # dockershim / cri-dockerd (Docker Engine's text)
        ('Error response from daemon: Get "https://myacr.azurecr.io/v2/": read tcp 10.0.0.4:50000->'
         "20.1.2.3:443: read: connection reset by peer", Code.FIREWALL_FORBIDDEN),
        ('Error response from daemon: Head "https://harbor.corp/v2/proj/a/manifests/1": unauthorized: '
         "unauthorized to access repository: proj/a, action: pull: unauthorized to access repository: "
         "proj/a, action: pull", Code.ACCESS_DENIED),
    ],
)
def test_other_runtime_versions(text: str, code: Code) -> None:
    assert classify(text).code is code


def test_facts_name_the_proxy_without_its_credentials_and_the_host_from_the_url() -> None:
    d = classify("Get https://index.docker.io/v1/repositories/library/x/images: http: error connecting to proxy "
                 "http://bob:hunter2@10.0.0.9:3128: dial tcp 10.0.0.9:3128: connect: connection refused")
    assert d.facts["proxy"] == "10.0.0.9:3128" and d.facts["host"] == "index.docker.io"
    assert d.summary.startswith("the egress HTTP proxy 10.0.0.9:3128 failed the connection to index.docker.io")
    assert "hunter2" not in d.facts["proxy"]
    named = classify('failed to do request: Head "https://r.io/v2/team/a/manifests/1": proxyconnect tcp: dial tcp: '
                     "lookup proxy.corp on 10.0.0.10:53: no such host")
    assert (named.facts["proxy"], named.facts["host"], named.facts["repository"]) == ("proxy.corp", "r.io", "team/a")
    ecr = classify("Error response from daemon: pull access denied for 1234.dkr.ecr.us-west-2.amazonaws.com/team/a, "
                   "repository does not exist or may require 'docker login': denied: User: arn:aws:iam::1234:user/u "
                   "is not authorized to perform: ecr:BatchGetImage on resource: x")
    assert ecr.facts["repository"] == "team/a" and ecr.facts["registry"] == "1234.dkr.ecr.us-west-2.amazonaws.com"


# --- node-local causes (issue 24) ---


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('Failed to pull image "r.io/a:1": pull QPS exceeded', Code.PULL_QPS_EXCEEDED),
        ('Failed to pull image "r.io/a:1": rpc error: code = Unknown desc = failed to pull and unpack image '
         '"r.io/a:1": failed to extract layer sha256:ab: write /var/lib/containerd/x: no space left on device: '
         "unknown", Code.NODE_DISK_FULL),
        ('Failed to pull image "r.io/a:1": rpc error: code = DeadlineExceeded desc = context deadline exceeded',
         Code.PULL_TIMED_OUT),
        ('Failed to pull image "r.io/a:1": context canceled', Code.PULL_TIMED_OUT),
        # A deadline inside a named request or dial is the network's, as before.
        ('failed to resolve reference "r.io/a:1": failed to do request: context deadline exceeded',
         Code.CONNECT_TIMEOUT),
        ('Failed to pull image "r.io/a:1": failed to do request: Head "https://r.io/v2/a/manifests/1": '
         "dial tcp 10.0.0.1:443: i/o timeout", Code.CONNECT_TIMEOUT),
        ('Get "https://r.io/v2/": net/http: request canceled while waiting for connection '
         "(Client.Timeout exceeded while awaiting headers)", Code.CONNECT_TIMEOUT),
        # Registries' own rate limits are not kubelet's.
        ("toomanyrequests: You have reached your pull rate limit", Code.RATE_LIMITED),
    ],
)
def test_node_local_causes(text: str, code: Code) -> None:
    assert classify(text).code is code


def test_a_bare_deadline_names_both_candidates_until_the_timeline_decides() -> None:
    from pullhealth.domain.classify import refine_by_timeline

    bare = classify('Failed to pull image "r.io/a:1": rpc error: code = Unknown desc = context deadline exceeded')
    assert bare.code is Code.PULL_TIMED_OUT and Code.CONNECT_TIMEOUT in bare.candidates
    assert refine_by_timeline(bare, None) == bare
    long = refine_by_timeline(bare, 125.0)
    assert long.code is Code.PULL_TIMED_OUT and "after 125s of pulling" in long.summary
    short = refine_by_timeline(bare, 4.0)
    assert short.code is Code.CONNECT_TIMEOUT and short.candidates == [Code.PULL_TIMED_OUT]
    other = classify("pull QPS exceeded")
    assert refine_by_timeline(other, 1.0) == other
