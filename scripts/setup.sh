#!/usr/bin/env bash
# Installs everything pullhealth's tests and demo need on a fresh Debian machine:
# Debian packages (real registry, DNS server, HTTP proxy, htpasswd), a virtualenv with the package and
# its dev extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus (with promtool) runs the alert rules against the operator (e2e/test_alerting.py).
PKGS=(docker-registry dnsmasq-base apache2-utils tinyproxy prometheus)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  # No recommends: prometheus would bring prometheus-node-exporter and its service.
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Tests start their own dnsmasq, tinyproxy and prometheus; the packages' system services
  # are not wanted (they may have been started by the install).
  for svc in tinyproxy dnsmasq prometheus; do
    if [[ " ${missing[*]} " == *" $svc "* ]]; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
  done
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pullhealth, pytest, trustme" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing pullhealth[dev] into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch .venv/.installed
fi
echo "setup: ready (.venv/bin/pullhealth)"
