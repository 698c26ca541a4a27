#!/usr/bin/env bash
# The README's first command: install everything, build the local control plane (cached
# under ~/.cache/pullhealth), then run the loopback-only demonstration (scripts/demo.py;
# --keep leaves it running until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A Go >= 1.26 for the control-plane build (setup.sh installed one when the system's is older).
export PATH="$(bash scripts/setup.sh --print-go-dir):$PATH"
bash hack/build-k8s.sh
# The pinned kubectl comes first on PATH (tests and the demo call `kubectl`).
export PATH="$(bash hack/build-k8s.sh --print-dirs | head -n1):$PATH"
exec .venv/bin/python scripts/demo.py "$@"
