"""``pullhealth run`` as a subprocess against a test world: for e2e tests, benchmarks, demo."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from support._common import terminate
from support.world import TEST_ALLOW_CIDR, World

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def records(lines: Sequence[str]) -> list[dict[str, Any]]:
    """The operator's JSON log records (``--log-format json``)."""
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class OperatorProcess:
    """The operator, restartable, with the world's resolver, CA and IMDS endpoint.

    Args:
        kubeconfig: the kubeconfig the operator uses (admin, or a ServiceAccount token's).
        world: the running test world.
        log: file the operator's output is appended to.
        extra_args: more ``pullhealth run`` flags.
        env: more environment variables (``POD_NAME``: the instance name, as the chart
            sets it through the downward API).
    """

    _instances: ClassVar[weakref.WeakSet[OperatorProcess]] = weakref.WeakSet()

    def __init__(self, kubeconfig: Path, world: World, log: Path, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        OperatorProcess._instances.add(self)
        self.kubeconfig = kubeconfig
        self.world = world
        self.log = log
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until the liveness endpoint answers.

        Raises:
            RuntimeError: the process died or did not become live in time (with its log tail).
        """
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(ROOT / "operator"),
            "PULLHEALTH_NAMESERVER": self.world.nameserver,
            "PULLHEALTH_CA_FILE": str(self.world.ca_bundle),
            "PULLHEALTH_IMDS_ENDPOINT": self.world.imds_url,
            **self.extra_env,
        }
        health = free_port()
        scope = [] if "--namespace" in self.extra_args else ["--all-namespaces"]
        # The world's registries are labelled by name in metrics (any other host is "other").
        named = [] if any(a.split("=", 1)[0] == "--metrics-registries" for a in self.extra_args) else [
            "--metrics-registries", ",".join((self.world.anon, self.world.basic, self.world.acr))]
        # Plain /metrics for the tests that read it (secure serving has its own test).
        if "--metrics-secure" not in self.extra_args:
            named.append("--no-metrics-secure")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pullhealth", "run", *scope,
                 "--metrics-port", str(self.metrics_port), "--metrics-bind-address", "127.0.0.1", *named,
                 "--liveness", f"http://127.0.0.1:{health}/healthz", "--log-format", "json",
                 "--kubelet-client-id", self.world.imds_client_id,
                 # The test world is on 127.0.0.1, which the default policy refuses.
                 "--allow-cidr", TEST_ALLOW_CIDR, *self.extra_args],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{health}/healthz", timeout=2
            ):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("operator did not become live:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        """Terminate (then kill) the process."""
        terminate(self.proc, grace=20.0)

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @classmethod
    @contextlib.contextmanager
    def others_stopped(cls) -> Iterator[None]:
        """Stop every operator process of this session (e.g. the shared e2e one) for a test
        that needs to be the only writer, and start them again afterwards."""
        stopped = [op for op in list(cls._instances) if op.running()]
        for op in stopped:
            op.stop()
        try:
            yield
        finally:
            for op in stopped:
                op.start()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up (no peering goodbye, no flush)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def check_log_clean(self, *more: str) -> None:
        """The log carries none of the world's credentials, nor ``more`` secrets."""
        text = self.text()
        for secret in (self.world.acr_puller[1], self.world.basic_user[1], *more):
            assert secret not in text, "a credential in the operator's log"

    def text(self) -> str:
        """Everything the operator logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self) -> list[str]:
        """Non-empty log lines."""
        return [line for line in self.text().splitlines() if line.strip()]

    def metrics(self) -> str:
        """The /metrics text."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def probe_requests(self, registry: str) -> float:
        """Sum of pullhealth_probe_requests_total for one registry."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("pullhealth_probe_requests_total{") and f'registry="{registry}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total
