"""The admission webhook with exactly the chart's RBAC (issue 23).

Its own module: the chart's objects are applied while no other webhook of this session is
registered (e2e/test_admission_apply.py's would warn about the chart's own image).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from support.chart import install_chart
from support.helm import require_helm
from support.operatorproc import OperatorProcess, free_port
from support.world import World

pytestmark = pytest.mark.usefixtures("no_session_operator")


def test_the_chart_rbac_is_enough_for_the_certificate_and_the_ca_bundle(
    dev_cluster: Any, world: World, tmp_path: Path
) -> None:
    """The operator with exactly the chart's rights (admission.enabled) creates its Secret and
    injects the CA; it cannot write other Secrets (it reads pull secrets by name, as
    before) nor other webhook configurations."""
    with install_chart(dev_cluster, require_helm(), "pullhealth-admission", "admission.enabled=true") as chart:
        config = chart.one("ValidatingWebhookConfiguration")["metadata"]["name"]
        deployment = chart.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
        flags = [a for a in deployment["args"] if a.startswith("--admission-")
                 and not a.startswith(("--admission-port", "--admission-host"))]
        kubeconfig = chart.token_kubeconfig(tmp_path / "operator.kubeconfig")
        secret = f"{config}-tls"
        for args, expected in (
            (["get", f"secret/{secret}", "-n", chart.namespace], "yes"),
            (["list", "secrets", "-n", chart.namespace], "no"),
            (["update", "secret/other", "-n", chart.namespace], "no"),
            (["create", "secrets", "-n", "default"], "no"),
            (["patch", f"validatingwebhookconfiguration/{config}"], "yes"),
            (["patch", "validatingwebhookconfiguration/other"], "no"),
        ):
            got = dev_cluster.kubectl("auth", "can-i", *args, check=False, kubeconfig=kubeconfig).stdout.strip()
            assert got == expected, (args, got)
        port = free_port()
        op = OperatorProcess(kubeconfig, world, tmp_path / "operator.log",
                             ["--admission-port", str(port), "--admission-bind-address", "127.0.0.1",
                              "--admission-host", "127.0.0.1", *flags])
        with op:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = json.loads(dev_cluster.kubectl("get", "validatingwebhookconfiguration", config,
                                                     "-o", "json").stdout)
                if all(w.get("clientConfig", {}).get("caBundle") for w in got["webhooks"]):
                    break
                time.sleep(0.3)
            else:
                pytest.fail("caBundle not injected with the chart's RBAC:\n" + op.text()[-3000:])
            stored = json.loads(dev_cluster.kubectl("get", "secret", "-n", chart.namespace, secret,
                                                    "-o", "json").stdout)
            assert all(w["clientConfig"]["caBundle"] == stored["data"]["ca.crt"] for w in got["webhooks"])
            text = op.text()
        assert "forbidden" not in text, [line for line in text.splitlines() if "forbidden" in line][:3]
