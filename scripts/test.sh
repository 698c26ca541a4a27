#!/usr/bin/env bash
# The README's second command (and CI's): install, build the local control plane (cached
# under ~/.cache/pullhealth), lint, type-check, check import layers, then run the unit +
# integration tests (real local registries, DNS, token service) and the e2e suite (real
# kube-apiserver; e2e/test_real_node.py adds a real node, kubelet + containerd, and builds
# the operator image from the Dockerfile). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A Go >= 1.26 for the control-plane build (setup.sh installed one when the system's is older).
export PATH="$(bash scripts/setup.sh --print-go-dir):$PATH"
bash hack/build-k8s.sh
# The pinned kubectl comes first on PATH (tests and the demo call `kubectl`).
export PATH="$(bash hack/build-k8s.sh --print-dirs | head -n1):$PATH"
export PATH="$PWD/.venv/bin:$PATH"
# e2e must run, not skip, when the binaries were just built.
export PULLHEALTH_REQUIRE_E2E=1

echo "== ruff"; ruff check operator dev tests e2e bench scripts
echo "== mypy --strict"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"
python -m pytest tests e2e "$@"
