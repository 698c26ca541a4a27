#!/usr/bin/env bash
# Build the Helm CLI (helm.sh/helm/v3/cmd/helm) from Go modules at the version pinned
# in hack/helm/versions.env (hack/helm/go.mod requires the same one as a `tool`).
# Tests (tests/test_chart_static.py, e2e/test_chart.py) and docs/install.md use it to
# lint and render charts/pullhealth; nothing prebuilt is downloaded.
#
# The binary lands in ${PULLHEALTH_CACHE:-$HOME/.cache/pullhealth}/helm/<version>/helm.
# It is built only when missing, written to a temporary name and renamed, and a lock
# serialises concurrent runs, so the script is idempotent and safe to interrupt.
#
# Usage: hack/build-helm.sh [--print-dir]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=helm/versions.env
source "${root}/helm/versions.env"

cache="${PULLHEALTH_CACHE:-${HOME}/.cache/pullhealth}"
helm_dir="${cache}/helm/${HELM_VERSION}"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "${helm_dir}"
  exit 0
fi

log() { printf 'build-helm: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed (need Go >= 1.26)"; exit 1; }
mkdir -p "${helm_dir}"

exec 9>"${cache}/.build-helm.lock"
flock 9

if [[ -x "${helm_dir}/helm" ]]; then
  log "helm ${HELM_VERSION} already built"
  printf '%s\t%s\n' "$(du -h "${helm_dir}/helm" | cut -f1)" "${helm_dir}/helm"
  exit 0
fi

# go.mod and versions.env must agree, or the binary would lie about its version.
required="$(cd "${root}/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v3)"
if [[ "${required}" != "${HELM_VERSION}" ]]; then
  log "hack/helm/go.mod requires helm ${required} but versions.env pins ${HELM_VERSION}"
  exit 1
fi

tmp="$(mktemp -d "${helm_dir}/.tmp.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT

# -buildvcs=false: stamped with the pinned version below, not this repository's git state.
export GOFLAGS="${GOFLAGS:+${GOFLAGS} }-trimpath -buildvcs=false"
export CGO_ENABLED="${CGO_ENABLED:-0}"

started=$SECONDS
log "downloading modules for hack/helm"
(cd "${root}/helm" && go mod download)

# The same version stamps as Helm's own Makefile: the release version, and the
# Kubernetes version that `helm lint`/`helm template` assume (client-go minor + 1.xx).
client_go="$(cd "${root}/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)"
client_go="${client_go#v}"
k8s_major="$(( ${client_go%%.*} + 1 ))"
k8s_minor="$(echo "${client_go}" | cut -d. -f2)"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X ${pkg}.k8sVersionMajor=${k8s_major} -X ${pkg}.k8sVersionMinor=${k8s_minor}"
done

# go build -v names each package as it is compiled: print a progress line every 50.
progress() {
  awk '
    /^[A-Za-z0-9._~\/-]+$/ { n++; if (n % 50 == 0) { printf "build-helm:   %d packages compiled\n", n; fflush() } next }
    { print; fflush() }
    END { printf "build-helm:   %d packages compiled in total\n", n }' >&2
}

log "compiling helm ${HELM_VERSION} (a few minutes on 2 cores)"
(cd "${root}/helm" && go build -v -ldflags "${ldflags}" -o "${tmp}/helm" helm.sh/helm/v3/cmd/helm) 2>&1 | progress
"${tmp}/helm" version --short >/dev/null
mv -f "${tmp}/helm" "${helm_dir}/helm"
log "built helm ${HELM_VERSION} in $((SECONDS - started))s"
printf '%s\t%s\n' "$(du -h "${helm_dir}/helm" | cut -f1)" "${helm_dir}/helm"
