"""Fuzz suite (hypothesis): generated registry answers, pull-error text and references.

Properties, for every generated input:

- the chain never raises, ends within its timeout (plus a small margin), and its CLI JSON
  output parses;
- no planted secret (the password, ASCII or not, in any encoding, or a token the server
  issued) appears in any output;
- the classifier and the reference parser never raise anything but their documented
  errors, and explain's JSON output parses.

The budget is bounded (``max_examples`` per property, no per-example deadline flakiness):
the whole module runs in well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pullhealth import cli
from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.domain import classify
from pullhealth.domain.credentials import Credential, CredentialKind
from pullhealth.domain.redact import Redactor
from pullhealth.domain.reference import InvalidReference, parse, parse_target
from support.pki import PKI
from support.scripted import Answer, ScriptedRegistry
from support.world import TEST_DESTINATIONS

USER = "fuzzer"
PASSWORDS = ("Fuzz-s3cret-pw", "pässwörd-ü€-fz")
TIMEOUT = 1.5
MARGIN = 1.0
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples every run: CI is reproducible
    database=None,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPES = [OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json",
               "application/vnd.oci.image.manifest.v1+json", "application/json", "text/plain", ""]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ScriptedRegistry, Path]]:
    with tempfile.TemporaryDirectory(prefix="pullhealth-fuzz-") as tmp:
        pki = PKI(Path(tmp))
        with ScriptedRegistry(pki) as srv:
            yield srv, pki.ca_bundle


def _echoes(password: str) -> list[str]:
    pair = f"{USER}:{password}"
    return [password, pair, base64.b64encode(pair.encode()).decode(), json.dumps(password)[1:-1],
            quote(password), f"Basic {base64.b64encode(pair.encode()).decode()}"]


def _forms(password: str, tokens: list[str]) -> list[str]:
    out = []
    for secret in [password, f"{USER}:{password}", *tokens]:
        out += [secret, base64.b64encode(secret.encode()).decode(), json.dumps(secret)[1:-1],
                quote(secret, safe="")]
    return [f for f in out if len(f) >= 4]


def _b64url(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"),
                      max_size=60)


@st.composite
def token_bodies(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A token service answer: a JWT with generated claims, an odd token, or junk."""
    kind = draw(st.sampled_from(["jwt", "opaque", "junk", "json"]))
    if kind == "jwt":
        claims = {"access": draw(json_values | st.lists(st.fixed_dictionaries({
            "type": st.sampled_from(["repository", "registry", ""]),
            "name": st.sampled_from(["team/app", "*", "other"]),
            "actions": json_values | st.lists(st.sampled_from(["pull", "push", "*", ""]), max_size=3)}),
            max_size=3)), "sub": draw(st.text(max_size=10))}
        token = f"{_b64url({'alg': 'none'})}.{_b64url(claims)}.{draw(st.text('abc', max_size=5))}"
        key = draw(st.sampled_from(["token", "access_token"]))
        return json.dumps({key: token}).encode(), [token]
    if kind == "opaque":
        token = draw(st.text(min_size=1, max_size=40))
        return json.dumps({"token": token}).encode(), [token] if len(token) >= 8 else []
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), []
    return draw(st.binary(max_size=200)), []


@st.composite
def answers(draw: st.DrawFn, host: str, password: str) -> tuple[dict[str, Answer], list[str]]:
    """A whole scripted registry: challenge, token and manifest answers, with echoes."""
    echo = draw(st.sampled_from(_echoes(password)))
    # 1xx are left out: a client waits for the final answer (the deadline ends it; slow).
    statuses = st.sampled_from([200, 401, 403, 404, 405, 429, 500, 502]) | st.integers(200, 599)
    # Mostly a usable challenge, so that the later steps get fuzzed too.
    good = f"https://{host}/token"
    realm = draw(st.sampled_from([good] * 6 + ["https://[x", "ftp://x", "", f"https://{host}/t?x=1",
                                              "https://127.0.0.1:99999/token", f"https://{host}/token\u00e4"]))
    www = draw(st.sampled_from([f'Bearer realm="{realm}",service="fuzz"'] * 6 + [
        f'Basic realm="{echo}"', "Bearer", "Negotiate", draw(header_text)]))
    challenge = Answer(draw(st.sampled_from([401] * 8 + [200, 403, 429, 500, 302])), (("WWW-Authenticate", www),),
                       draw(st.sampled_from([b"", b"{}", json.dumps({"errors": [{"message": echo}]}).encode()])))
    token_body, tokens = draw(token_bodies())
    token_status = draw(st.sampled_from([200] * 4 + [401, 404, 429, 500]))
    if token_status != 200:
        token_body = json.dumps({"errors": [{"code": draw(json_values), "message": f"bad {echo}"}],
                                 "error_description": draw(st.sampled_from([echo, "x"]))}).encode()
    token = Answer(token_status, (("X-Echo", echo),), token_body)
    media = draw(st.sampled_from(MEDIA_TYPES))
    manifest_doc = draw(st.sampled_from(["index", "json", "junk", "errors"]))
    if manifest_doc == "index":
        body = json.dumps({"mediaType": media, "manifests": draw(json_values | st.lists(
            st.fixed_dictionaries({"platform": json_values | st.fixed_dictionaries(
                {"os": json_values, "architecture": json_values, "variant": json_values})}), max_size=4))})
    elif manifest_doc == "json":
        body = json.dumps(draw(json_values))
    elif manifest_doc == "errors":
        body = json.dumps({"errors": draw(json_values | st.just([{"code": "DENIED", "message": echo}]))})
    else:
        body = draw(st.text(max_size=100)) + echo
    manifest = Answer(draw(st.sampled_from([200] * 4 + [401, 403, 404, 429, 500]) | statuses), (("Content-Type", media), ("Docker-Content-Digest", draw(header_text)),
                                       ("Retry-After", draw(header_text))), body.encode())
    tags = Answer(draw(st.sampled_from([200, 404, 500])), (), draw(st.sampled_from([b"{}", b"x"])))
    return {"challenge": challenge, "token": token, "manifest": manifest, "tags": tags}, tokens


def _cli_json(diagnosis: object, reference: str, password: str) -> dict[str, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli._print_check(diagnosis, reference, "json", Redactor([password]))  # type: ignore[arg-type]
    doc: dict[str, object] = json.loads(out.getvalue())
    return doc


@pytest.mark.parametrize("password", PASSWORDS)
def test_chain_against_generated_registry_answers(server: tuple[ScriptedRegistry, Path], password: str) -> None:
    srv, ca = server
    reference = f"{srv.host}/team/app:v1"
    registry, image = parse_target(reference)
    options = ChainOptions(ca_file=str(ca), timeout=TIMEOUT, destinations=TEST_DESTINATIONS)
    credential = Credential(CredentialKind.BASIC, "fuzz", USER, password)

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        script, tokens = data.draw(answers(srv.host, password))
        srv.set(script)
        started = time.monotonic()
        diagnosis = asyncio.run(run_chain(Target(registry, image, credential), options))
        assert time.monotonic() - started < TIMEOUT + MARGIN
        # Registry input is validated: nothing it sends is an "unexpected error".
        assert diagnosis.code.value != "UNKNOWN", diagnosis.checks
        doc = _cli_json(diagnosis, reference, password)
        dumped = json.dumps(doc, ensure_ascii=False) + json.dumps(doc) + diagnosis.model_dump_json()
        for form in _forms(password, tokens):
            assert form not in dumped, form
        _assert_printable(doc)

    check()


# C0/C1 controls, DEL, line/paragraph separators, bidi overrides: never shown raw.
CONTROLS = "".join(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x202E, 0x2066])


def _assert_printable(value: object) -> None:
    """Every string in a JSON-like value is free of control characters."""
    if isinstance(value, str):
        assert not any(ch in CONTROLS for ch in value), repr(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _assert_printable(k)
            _assert_printable(v)
    elif isinstance(value, list):
        for v in value:
            _assert_printable(v)


hostile_text = st.text(alphabet=st.sampled_from(CONTROLS) | st.characters(codec="utf-8"), max_size=40)


def test_every_output_string_is_printable(server: tuple[ScriptedRegistry, Path]) -> None:
    """Issue 21: an image index's platform strings, OCI messages and Retry-After with
    terminal escapes, CR/LF and bidi overrides reach no output raw (JSON and text)."""
    srv, ca = server
    reference = f"{srv.host}/team/app:v1"
    registry, image = parse_target(reference)
    options = ChainOptions(ca_file=str(ca), timeout=TIMEOUT, destinations=TEST_DESTINATIONS)

    @FUZZ
    @given(os_=hostile_text, arch=hostile_text, variant=hostile_text, message=hostile_text,
           status=st.sampled_from([200, 404, 429, 500]))
    def check(os_: str, arch: str, variant: str, message: str, status: int) -> None:
        index = {"mediaType": OCI_INDEX, "schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "a" * 64,
             "size": 1, "platform": {"os": os_, "architecture": arch, "variant": variant}}]}
        body = index if status == 200 else {"errors": [{"code": "DENIED", "message": message}]}
        srv.set({"challenge": Answer(200),
                 "manifest": Answer(status, (("Content-Type", OCI_INDEX), ("Retry-After", "5\x1b[2J")),
                                    json.dumps(body).encode())})
        diagnosis = asyncio.run(run_chain(Target(registry, image), options))
        doc = _cli_json(diagnosis, reference, "unused-pw")
        _assert_printable(doc)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli._print_check(diagnosis, reference, "text", Redactor())
        for line in out.getvalue().splitlines():
            _assert_printable(line)

    check()


SHAPED = [  # (text, the secret value in it)
    ("Authorization: Basic YWxpY2U6czNjcmV0LWFsaWNl", "YWxpY2U6czNjcmV0LWFsaWNl"),
    ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln", "eyJzdWIiOiJ4In0"),
    ("password=hunter2-pw", "hunter2-pw"),
    ('"auth": "YWxpY2U6cHc="', "YWxpY2U6cHc="),
    ("refresh_token=abc.def.ghi", "abc.def.ghi"),
]


@FUZZ
@given(text=st.text(max_size=300), shaped=st.sampled_from(SHAPED), at=st.integers(0, 300))
def test_classifier_never_raises_and_explain_json_parses(text: str, shaped: tuple[str, str], at: int) -> None:
    secret, value = shaped
    message = text[:at] + " " + secret + " " + text[at:]
    diagnosis = classify.classify(message)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli._print_explain(diagnosis, "json")
    doc = json.loads(out.getvalue())
    assert value not in json.dumps(doc, ensure_ascii=False)


@FUZZ
@given(text=st.text(max_size=120) | st.from_regex(
    r"[a-z0-9.\[\]:-]{1,70}(:[0-9]{1,6})?/[a-z0-9/._-]{1,30}(:[\w.-]{1,10})?(@sha256:[0-9a-f]{64})?", fullmatch=True))
def test_reference_parser_raises_only_invalid_reference(text: str) -> None:
    for fn in (parse, parse_target):
        with contextlib.suppress(InvalidReference):
            fn(text)


@st.composite
def ipv4_spellings(draw: st.DrawFn, network: str) -> tuple[str, str]:
    """(a spelling inet_aton accepts, the address it means) for an address in ``network``."""
    import ipaddress

    net = ipaddress.ip_network(network)
    address = net[draw(st.integers(0, net.num_addresses - 1))]
    raw = int(address)
    parts_count = draw(st.integers(1, 4))
    head = [(raw >> (8 * (3 - i))) & 0xFF for i in range(parts_count - 1)]
    last = raw & ((1 << (8 * (4 - len(head)))) - 1)
    parts = []
    for value in [*head, last]:
        form = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
        if form == "dec":
            parts.append(str(value))
        elif form == "oct":
            parts.append("0" + format(value, "o"))
        else:
            text = "0x" + format(value, "x")
            parts.append(text.upper().replace("0X", draw(st.sampled_from(["0x", "0X"]))) if form == "HEX" else text)
    return ".".join(parts), str(address)


@FUZZ
@given(data=st.data(), network=st.sampled_from(["127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8",
                                                 "168.63.129.16/32", "100.100.100.200/32"]))
def test_every_numeric_spelling_of_a_refused_address_is_refused(data: st.DataObject, network: str) -> None:
    """Issue 21: the policy reads a numeric host as the C resolver does, so a proxy (which
    resolves the name itself) is never sent a spelling the direct mode refuses."""
    import socket

    from pullhealth.domain.codes import Code
    from pullhealth.probes.destinations import DestinationPolicy, numeric_ipv4
    from pullhealth.probes.net import StepError

    spelling, address = data.draw(ipv4_spellings(network))
    assert socket.inet_ntoa(socket.inet_aton(spelling)) == address  # the generator is right
    assert str(numeric_ipv4(spelling)) == address
    with pytest.raises(StepError) as err:
        DestinationPolicy().check_peer_name(spelling, 443)
    assert err.value.code is Code.DESTINATION_REFUSED


@FUZZ
@given(name=st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\.localhost\.?", fullmatch=True))
def test_every_localhost_name_is_refused(name: str) -> None:
    from pullhealth.domain.codes import Code
    from pullhealth.probes.destinations import DestinationPolicy
    from pullhealth.probes.net import StepError

    with pytest.raises(StepError) as err:
        DestinationPolicy().check_peer_name(name, 443)
    assert err.value.code is Code.DESTINATION_REFUSED
