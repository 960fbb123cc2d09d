#!/usr/bin/env bash
# Regenerates the Go wrapper modules under toolchain/<tool>/ from toolchain/versions.env.
#
# Run this only after changing a version; the generated go.mod/go.sum are committed, and
# toolchain/build.sh builds from them as they are (so builds are reproducible and offline-friendly).
#
# Why wrapper modules: `go install k8s.io/kubernetes/cmd/...@v1.x` is refused because the module's
# go.mod replaces its staging modules (k8s.io/api, ...) with local folders and requires them at
# v0.0.0. A main module of our own that pins each staging module at the matching v0.x release
# builds the same commands. The staging list changes between releases, so it is read from the
# published go.mod of the exact version rather than typed here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=toolchain/versions.env
source "$here/versions.env"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local

new_module() { # <dir> <module path>
  rm -rf "$1" && mkdir -p "$1" && cd "$1"
  go mod init "$2" >/dev/null 2>&1
  go mod edit -go=1.25.0
}

sync_kubernetes() {
  local staging="v0.${KUBERNETES_VERSION#v1.}"
  new_module "$here/kubernetes" ocean-c2d.local/toolchain/kubernetes
  local upstream_mod
  upstream_mod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  local m count=0
  for m in $(sed -n 's|^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/src/.*|\1|p' "$upstream_mod"); do
    go mod edit -replace="$m=$m@$staging"
    count=$((count + 1))
  done
  echo "kubernetes: pinned $count staging modules at $staging (read from k8s.io/kubernetes@$KUBERNETES_VERSION go.mod)"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    go get -tool "k8s.io/kubernetes/cmd/$c@$KUBERNETES_VERSION"
  done
  go mod tidy
}

sync_simple() { # <dir> <version> <package>...
  local dir="$1" version="$2"; shift 2
  new_module "$here/$dir" "ocean-c2d.local/toolchain/$dir"
  local p
  for p in "$@"; do go get -tool "$p@$version"; done
  go mod tidy
  echo "$dir: $* @ $version"
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(kubernetes etcd kwok helm)
for t in "${tools[@]}"; do
  case "$t" in
    kubernetes) sync_kubernetes ;;
    etcd) sync_simple etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 ;;
    kwok) sync_simple kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl ;;
    helm) sync_simple helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
    *) echo "unknown tool: $t" >&2; exit 2 ;;
  esac
done
