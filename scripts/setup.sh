#!/usr/bin/env bash
# Installs everything pullhealth's tests and demo need on a fresh Debian machine:
# Debian packages (real registry, DNS server, HTTP proxy, htpasswd), a Go toolchain new
# enough to build the control plane, a virtualenv with the package and its dev extras.
# Idempotent: a second run only checks.
#
#   bash scripts/setup.sh                  # everything
#   bash scripts/setup.sh --print-go-dir   # only make sure of Go; print the dir of a suitable `go`
set -euo pipefail
cd "$(dirname "$0")/.."

# --- Go >= 1.26 (etcd 3.6 and Kubernetes 1.34 need it; Debian's golang-go is older) -----
# Go toolchains are modules on the Go module proxy (golang.org/toolchain@v0.0.1-goX.Y.Z.OS-ARCH),
# checked against the checksum database like any module: any Go, even Debian's 1.19, can
# download one with `go mod download`. It is kept under ~/.cache/pullhealth/go.
GO_VERSION=go1.26.8
GO_MIN_MINOR=26
cache="${PULLHEALTH_CACHE:-${HOME}/.cache/pullhealth}"

go_suitable() {  # go_suitable PATH-TO-GO: true when it runs and is >= 1.26
  local v
  v="$("$1" env GOVERSION 2>/dev/null)" || return 1
  [[ "$v" =~ ^go1\.([0-9]+) ]] && ((BASH_REMATCH[1] >= GO_MIN_MINOR))
}

ensure_go() {  # prints the directory of a suitable go; progress on stderr
  local found arch bootstrap tmp dir link
  found="$(command -v go || true)"
  if [ -n "$found" ] && go_suitable "$found"; then dirname "$found"; return; fi
  link="${cache}/go/${GO_VERSION}"
  if [ -x "${link}/bin/go" ] && go_suitable "${link}/bin/go"; then echo "${link}/bin"; return; fi
  case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64|arm64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
  bootstrap="${PULLHEALTH_BOOTSTRAP_GO:-${found:-}}"
  if [ -z "$bootstrap" ] && [ -x /usr/lib/go/bin/go ]; then bootstrap=/usr/lib/go/bin/go; fi
  if [ -z "$bootstrap" ]; then
    echo "setup: no Go found; installing Debian's golang-go to download Go ${GO_VERSION#go} with" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q golang-go >&2 \
      || { $SUDO apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q golang-go >&2; }
    bootstrap=/usr/lib/go/bin/go
  fi
  echo "setup: downloading Go ${GO_VERSION#go} (golang.org/toolchain) with $("$bootstrap" version) into ${cache}/go" >&2
  mkdir -p "${cache}/go"
  tmp="$(mktemp -d)"
  printf 'module pullhealth.local/gobootstrap\n\ngo 1.19\n' > "${tmp}/go.mod"
  dir="$(cd "$tmp" && GOMODCACHE="${cache}/go/mod" GOFLAGS=-modcacherw GOTOOLCHAIN=local \
    "$bootstrap" mod download -json "golang.org/toolchain@v0.0.1-${GO_VERSION}.linux-${arch}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  rm -rf "$tmp"
  [ -n "$dir" ] && [ -f "${dir}/bin/go" ] || { echo "setup: the Go toolchain download failed" >&2; exit 1; }
  # Module zips carry no file modes: make the toolchain's programs executable (as the go
  # command does when it switches toolchains itself).
  chmod +x "${dir}/bin/"* "${dir}/pkg/tool/"*/* 2>/dev/null || true
  ln -sfn "$dir" "$link"
  go_suitable "${link}/bin/go" || { echo "setup: ${link}/bin/go does not run" >&2; exit 1; }
  echo "${link}/bin"
}

if [[ "${1:-}" == "--print-go-dir" ]]; then
  ensure_go
  exit 0
fi

# prometheus (with promtool) runs the alert rules against the operator (e2e/test_alerting.py).
# containerd, runc and containernetworking-plugins make the real node of `pullhealth-dev
# cluster up --node` (with kubelet from hack/build-k8s.sh, which compiles pause.c with gcc);
# buildah and mmdebstrap build the operator image from the Dockerfile without a daemon or
# a registry (`pullhealth-dev cluster install`).
PKGS=(docker-registry dnsmasq-base apache2-utils tinyproxy prometheus
      containerd runc containernetworking-plugins gcc libc6-dev buildah mmdebstrap)
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
  for svc in tinyproxy dnsmasq prometheus containerd; do
    if [[ " ${missing[*]} " == *" $svc "* ]]; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
  done
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pullhealth, pullhealth_dev, pytest, trustme" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ] || [ dev/pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing pullhealth[dev] and pullhealth-dev (dev/) into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]' -e ./dev
  touch .venv/.installed
fi
go_dir="$(ensure_go)"
echo "setup: Go: ${go_dir}/go ($("${go_dir}/go" env GOVERSION))"
echo "setup: ready: .venv/bin/pullhealth (or 'source .venv/bin/activate', then pullhealth)"
