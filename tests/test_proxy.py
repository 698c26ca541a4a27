"""The pull path through an egress HTTP proxy (Debian's tinyproxy, CONNECT), for real.

Targets are IP literals (127.0.0.1:PORT) so tinyproxy never resolves a name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.domain.codes import Code
from pullhealth.domain.model import StepStatus
from pullhealth.domain.reference import parse_target
from pullhealth.probes.proxy import Proxy, bypasses, from_environment, parse_proxy
from support.proxy import TinyProxy
from support.world import TEST_DESTINATIONS

ROOT = Path(__file__).resolve().parents[1]


def port_of(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def proxies(world: Any) -> Iterator[tuple[TinyProxy, TinyProxy]]:
    anon = port_of(world.anon)
    open_proxy = TinyProxy([anon]).start()
    auth_proxy = TinyProxy([anon], basic_auth=("proxyuser", "proxy-s3cret")).start()
    try:
        yield open_proxy, auth_proxy
    finally:
        open_proxy.stop()
        auth_proxy.stop()


def options(world: Any, proxy: Proxy | None, no_proxy: tuple[str, ...] = ()) -> ChainOptions:
    return ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=3.0,
                        proxy=proxy, no_proxy=no_proxy, destinations=TEST_DESTINATIONS)


async def check(world: Any, ref: str, proxy: Proxy | None, no_proxy: tuple[str, ...] = ()) -> Any:
    registry, image = parse_target(ref)
    return await run_chain(Target(registry, image), options(world, proxy, no_proxy))


async def test_healthy_through_the_proxy(world: Any, proxies: Any) -> None:
    tiny, _ = proxies
    d = await check(world, f"127.0.0.1:{port_of(world.anon)}/library/alpine:3.19", parse_proxy(tiny.address))
    assert d.code is Code.OK, d.checks
    assert "proxy" in d.checks[0].message and "resolved by the proxy" in d.checks[0].message
    assert d.checks[1].message.startswith("TCP connect to proxy")


async def test_proxy_refusing_connect_is_proxy_error(world: Any, proxies: Any) -> None:
    tiny, _ = proxies  # CONNECT is allowed to the anonymous registry's port only
    d = await check(world, f"127.0.0.1:{port_of(world.basic)}/team/app:v1", parse_proxy(tiny.address))
    assert d.code is Code.PROXY_ERROR, d.checks
    assert d.summary.startswith(f"the egress HTTP proxy {tiny.address} failed the connection to 127.0.0.1")
    assert "refused CONNECT" in d.summary and "403" in d.summary
    assert any("NO_PROXY" in step for step in d.remediation)
    assert [c.status for c in d.checks][:3] == [StepStatus.PASSED, StepStatus.PASSED, StepStatus.FAILED]


async def test_proxy_down_is_proxy_error(world: Any) -> None:
    from support.httpfixtures import closed_port

    d = await check(world, f"127.0.0.1:{port_of(world.anon)}/library/alpine:3.19",
                    parse_proxy(f"127.0.0.1:{closed_port()}"))
    assert d.code is Code.PROXY_ERROR
    assert "proxy" in d.checks[1].message and "CONNECT_REFUSED" in d.summary
    assert d.checks[2].status is StepStatus.SKIPPED


async def test_proxy_credentials(world: Any, proxies: Any) -> None:
    _, auth = proxies
    ref = f"127.0.0.1:{port_of(world.anon)}/library/alpine:3.19"
    denied = await check(world, ref, parse_proxy(auth.address))
    assert denied.code is Code.PROXY_ERROR and "demands proxy credentials (HTTP/1.0 407" in denied.summary
    assert denied.summary.startswith("the egress HTTP proxy 127.0.0.1:")
    wrong = await check(world, ref, parse_proxy(f"http://proxyuser:wrong-pw@{auth.address}"))
    assert wrong.code is Code.PROXY_ERROR and "rejected the proxy credentials" in wrong.summary
    assert "wrong-pw" not in wrong.model_dump_json()
    ok = await check(world, ref, parse_proxy(f"http://proxyuser:proxy-s3cret@{auth.address}"))
    assert ok.code is Code.OK, ok.checks
    assert "proxy-s3cret" not in ok.model_dump_json()


async def test_no_proxy_goes_direct(world: Any, proxies: Any) -> None:
    tiny, _ = proxies
    d = await check(world, f"{world.anon}/library/alpine:3.19", parse_proxy(tiny.address), ("anon.test",))
    assert d.code is Code.OK
    assert "proxy" not in d.checks[0].message


def test_no_proxy_rules() -> None:
    rules = ("localhost", ".svc", "azurecr.io", "10.0.0.0/8", "registry.internal:5000")
    assert bypasses("myacr.azurecr.io", 443, rules)
    assert bypasses("azurecr.io", 443, rules)
    assert not bypasses("azurecr.io.evil.com", 443, rules)
    assert bypasses("kube-dns.kube-system.svc", 53, rules)
    assert bypasses("10.1.2.3", 443, rules)
    assert not bypasses("11.1.2.3", 443, rules)
    assert bypasses("registry.internal", 5000, rules)
    assert not bypasses("registry.internal", 443, rules)
    assert bypasses("anything", 1, ("*",))


def test_proxy_from_environment_and_parsing() -> None:
    proxy, no_proxy = from_environment({"HTTPS_PROXY": "http://u:p%40ss@proxy.corp:3128", "NO_PROXY": "a, .b"})
    assert proxy is not None and (proxy.host, proxy.port, proxy.username, proxy.password) == (
        "proxy.corp", 3128, "u", "p@ss")
    assert no_proxy == ("a", ".b")
    assert "p@ss" not in repr(proxy) and proxy.shown == "proxy.corp:3128"
    assert from_environment({}) == (None, ())
    with pytest.raises(ValueError, match="http://"):
        parse_proxy("socks5://x:1080")


def test_cli_proxy_option_never_prints_proxy_credentials(world: Any, proxies: Any) -> None:
    _, auth = proxies
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    proc = subprocess.run(
        [sys.executable, "-m", "pullhealth", "check", f"127.0.0.1:{port_of(world.anon)}/library/alpine:3.19",
         "--proxy", f"http://proxyuser:proxy-s3cret@{auth.address}", "--ca-file", str(world.ca_bundle),
         "--timeout", "3", "--output", "json"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["code"] == "OK" and "proxy" in doc["checks"][0]["message"]
    assert "proxy-s3cret" not in proc.stdout + proc.stderr


def test_operator_environment_reads_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from pullhealth.chain.pullsources import Environment

    monkeypatch.setenv("PULLHEALTH_PROXY", "env")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", ".svc,10.0.0.0/8")
    monkeypatch.setenv("PULLHEALTH_NO_PROXY", "myacr.azurecr.io")
    env = Environment.from_env()
    assert env.proxy == Proxy("proxy.corp", 3128)
    assert env.no_proxy == (".svc", "10.0.0.0/8", "myacr.azurecr.io")
    monkeypatch.setenv("PULLHEALTH_PROXY", "http://other:8080")
    assert Environment.from_env().proxy == Proxy("other", 8080)
    monkeypatch.delenv("PULLHEALTH_PROXY")
    assert Environment.from_env().proxy is None  # HTTPS_PROXY alone is not followed: opt-in
