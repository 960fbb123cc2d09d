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
  while read -r m; do
    go mod edit -replace="$m=$m@$staging"
    count=$((count + 1))
  done < <(sed -n 's|^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/src/.*|\1|p' "$upstream_mod")
  echo "kubernetes: pinned $count staging modules at $staging (read from k8s.io/kubernetes@$KUBERNETES_VERSION go.mod)"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
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

copy_directives() { # <upstream go.mod> <name>: its module-path replaces and excludes, into ./go.mod
  local line old new count=0
  # `go mod edit -print` canonicalizes the file: one directive per line inside blocks, `=>` spaced.
  while read -r line; do
    line="${line%%//*}"
    line="${line#replace }"
    case "$line" in
      *" => ./"* | *" => ../"* | *" => /"*) ;;   # local folders: not available to a dependent module
      *" => "*)
        old="${line%% => *}" new="${line#* => }"
        old="${old% }"; old="${old// /@}"; new="${new% }"; new="${new// /@}"
        go mod edit -replace="$old=$new"
        count=$((count + 1)) ;;
    esac
  done < <(go mod edit -print "$1" | sed -n '/^replace (/,/^)/p; /^replace [^(]/p')
  while read -r line; do
    line="${line%%//*}"; line="${line#exclude }"; line="${line% }"
    case "$line" in "" | "(" | ")") continue ;; esac
    go mod edit -exclude="${line// /@}"
    count=$((count + 1))
  done < <(go mod edit -print "$1" | sed -n '/^exclude (/,/^)/p; /^exclude [^(]/p')
  echo "$2: copied $count replace/exclude directives from $(basename "$1")"
}

sync_kubo() {
  # kubo's go.mod replaces go-libp2p with a patched fork and excludes some versions; a dependency's
  # replace and exclude directives are ignored, so the wrapper copies them, read from the published
  # go.mod of the exact version, before resolving anything.
  new_module "$here/kubo" ocean-c2d.local/toolchain/kubo
  local upstream_mod
  upstream_mod="$(go mod download -json "github.com/ipfs/kubo@$KUBO_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  copy_directives "$upstream_mod" kubo
  if [ -n "${KUBO_LIBP2P_VERSION:-}" ]; then
    # The fork is not served by the module proxy: use the go-libp2p release that superseded it.
    go mod edit -dropreplace=github.com/libp2p/go-libp2p
    go get "github.com/libp2p/go-libp2p@$KUBO_LIBP2P_VERSION"
    echo "kubo: go-libp2p @ $KUBO_LIBP2P_VERSION instead of kubo's replace (see versions.env)"
  fi
  go get -tool "github.com/ipfs/kubo/cmd/ipfs@$KUBO_VERSION"
  go mod tidy
  echo "kubo: github.com/ipfs/kubo/cmd/ipfs @ $KUBO_VERSION"
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(kubernetes etcd kwok helm kubo versitygw chart-testing prometheus actionlint kube-router)
for t in "${tools[@]}"; do
  case "$t" in
    kubernetes) sync_kubernetes ;;
    etcd) sync_simple etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 ;;
    kwok) sync_simple kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl ;;
    helm) sync_simple helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
    kubo) sync_kubo ;;
    versitygw) sync_simple versitygw "$VERSITYGW_VERSION" github.com/versity/versitygw/cmd/versitygw ;;
    chart-testing) sync_simple chart-testing "$CHART_TESTING_VERSION" github.com/helm/chart-testing/v3/ct ;;
    prometheus)
      sync_simple prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus \
        github.com/prometheus/prometheus/cmd/promtool ;;
    actionlint) sync_simple actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint ;;
    kube-router)
      sync_simple kube-router "$KUBE_ROUTER_VERSION" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router ;;
    argo-workflows)  # only on demand (benchmarks/argo.py): not in the default list
      sync_simple argo-workflows "$ARGO_WORKFLOWS_VERSION" \
        github.com/argoproj/argo-workflows/v4/cmd/workflow-controller ;;
    *) echo "unknown tool: $t" >&2; exit 2 ;;
  esac
done
