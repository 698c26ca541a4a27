"""``pullhealth-dev``: the local world's command line.

``pullhealth-dev cluster [--state-dir DIR] {up,down,status,kubeconfig,install} [--node]`` runs the
local control plane (:mod:`pullhealth_dev.cluster`) and, with ``up --node``, a real node
(:mod:`pullhealth_dev.node`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pullhealth_dev import cluster

USAGE = "usage: pullhealth-dev cluster [--state-dir DIR] {up,down,status,kubeconfig,install} [--node]"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pullhealth-dev``; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["cluster"]:
        return cluster.main(args[1:])
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2
