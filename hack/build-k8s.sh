#!/usr/bin/env bash
# Build the local control plane and node used by e2e tests and `pullhealth-dev cluster`:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, at the versions pinned in
# hack/k8s/versions.env, and the node's pause image from upstream's pause.c.
#
# Binaries land in ${PULLHEALTH_CACHE:-$HOME/.cache/pullhealth}/k8s/<k8s-version>/
# and .../etcd/<etcd-version>/. Each one is built only when missing, written to a
# temporary name and renamed, so the script is idempotent, safe to interrupt and
# safe to run concurrently (a lock serialises builds). Needs Go and the module proxy.
#
# Usage: hack/build-k8s.sh [--print-dirs]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=k8s/versions.env
source "${root}/k8s/versions.env"

cache="${PULLHEALTH_CACHE:-${HOME}/.cache/pullhealth}"
k8s_dir="${cache}/k8s/${K8S_VERSION}"
etcd_dir="${cache}/etcd/${ETCD_VERSION}"

if [[ "${1:-}" == "--print-dirs" ]]; then
  echo "${k8s_dir}"
  echo "${etcd_dir}"
  exit 0
fi

log() { printf 'build-k8s: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is not installed (need Go >= 1.26)"; exit 1; }
mkdir -p "${k8s_dir}" "${etcd_dir}"

# Serialise concurrent runs (two CI steps, or a developer and a test fixture).
exec 9>"${cache}/.build-k8s.lock"
flock 9

tmp=""
trap 'rm -rf "${tmp}"' EXIT

# -buildvcs=false: the binaries are stamped with the pinned versions below, not
# with this repository's git state (which may have no commit yet).
export GOFLAGS="${GOFLAGS:+${GOFLAGS} }-trimpath -buildvcs=false"
export CGO_ENABLED="${CGO_ENABLED:-0}"

# go build -v names each package as it is compiled: turn that into a progress
# line every 100 packages, and pass anything else (errors) through unchanged.
progress() {
  local start=$SECONDS
  awk -v start="${start}" '
    /^[A-Za-z0-9._~\/-]+$/ { n++; if (n % 100 == 0) { printf "build-k8s:   %d packages compiled\n", n; fflush() } next }
    { print; fflush() }
    END { printf "build-k8s:   %d packages compiled in total\n", n }' >&2
}

# build <module dir> <out dir> <ldflags> <main package>...
build() {
  local dir="$1" out="$2" ldflags="$3"
  shift 3
  tmp="$(mktemp -d "${out}/.tmp.XXXXXX")"
  local started=$SECONDS
  log "downloading modules for ${dir#"${root}"/}"
  (cd "${dir}" && go mod download)
  log "compiling $* (several minutes on 2 cores)"
  (cd "${dir}" && go build -v -ldflags "${ldflags}" -o "${tmp}/" "$@") 2>&1 | progress
  local name
  for pkg in "$@"; do
    name="$(basename "${pkg}")"
    mv -f "${tmp}/${name}" "${out}/${name}"
  done
  rm -rf "${tmp}"
  log "built $* in $((SECONDS - started))s"
}

# --- kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl ---------
k8s_bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
k8s_missing=()
for bin in "${k8s_bins[@]}"; do
  [[ -x "${k8s_dir}/${bin}" ]] || k8s_missing+=("./cmd/${bin}")
done
if [[ ${#k8s_missing[@]} -gt 0 ]]; then
  info="$(cd "${root}/k8s" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Info"])')"
  # The release tag's own date, so rebuilding gives the same --version output.
  build_date="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Time"])' "${info}")"
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
    ldflags+=" -X ${pkg}.gitCommit="
  done
  build "${root}/k8s" "${k8s_dir}" "${ldflags}" "${k8s_missing[@]}"
else
  log "${k8s_bins[*]} ${K8S_VERSION} already built"
fi

# --- pause (the node's sandbox image) ------------------------------------------------
# No registry is reachable, so the sandbox image cannot be pulled: build it from the
# pause.c shipped in the kubernetes module (build/pause/linux), statically, and pack it
# as an OCI archive that `pullhealth-dev cluster up --node` imports into containerd.
if [[ ! -f "${k8s_dir}/pause.oci.tar" ]]; then
  command -v cc >/dev/null || { log "a C compiler is needed for pause.c (apt-get install gcc libc6-dev)"; exit 1; }
  k8s_src="$(cd "${root}/k8s" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  tmp="$(mktemp -d "${k8s_dir}/.tmp.XXXXXX")"
  cc -Os -static -Wall -Werror -DVERSION="${K8S_VERSION}-pullhealth" -o "${tmp}/pause" \
    "${k8s_src}/build/pause/linux/pause.c"
  strip "${tmp}/pause" 2>/dev/null || true
  python3 "${root}/oci-archive.py" "${tmp}/pause" /pause "${tmp}/pause.oci.tar" \
    "localhost/pullhealth/pause:${K8S_VERSION}"
  mv -f "${tmp}/pause" "${k8s_dir}/pause"
  mv -f "${tmp}/pause.oci.tar" "${k8s_dir}/pause.oci.tar"
  rm -rf "${tmp}"
  log "built pause and its image archive"
fi

# --- etcd ---------------------------------------------------------------------------
if [[ ! -x "${etcd_dir}/etcd" ]]; then
  build "${root}/etcd" "${etcd_dir}" \
    "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" ./cmd/etcd
else
  log "etcd ${ETCD_VERSION} already built"
fi

for bin in "${k8s_bins[@]/#/${k8s_dir}/}" "${etcd_dir}/etcd"; do
  printf '%s\t%s\n' "$(du -h "${bin}" | cut -f1)" "${bin}"
done

# --- helm (charts/pullhealth tests) ---------------------------------------------------
# Built by its own script (see hack/build-helm.sh); called here so that CI, which runs
# this script, also has helm for tests/test_chart_static.py and e2e/test_chart.py.
bash "${root}/build-helm.sh"
