#!/usr/bin/env bash
# Builds the Go tools the local cluster (with its real node: kubelet, kube-router) and the chart tests
# need, and the S3 (versitygw) and IPFS (kubo) servers of the data-plane tests, from the wrapper modules
# under toolchain/<tool>/, into a version-keyed cache outside the repository:
#
#   ${OCEAN_C2D_CACHE:-~/.cache/ocean-c2d}/bin/<tool>-<key>/
#
# <key> hashes the Go version and the tool's go.mod/go.sum, so a tool is rebuilt exactly when its
# pins change and skipped otherwise. A cold build of everything takes tens of minutes on 2 cores;
# it prints which binary it builds and how long it took, so a person can tell it is not stuck.
#
#   toolchain/build.sh [tool...]     build what is missing (all tools by default)
#   toolchain/build.sh --path [tool...]
#                                    print the PATH fragment holding every tool, or the named ones
#                                    (builds nothing; exits 1 naming what is missing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=toolchain/versions.env
source "$here/versions.env"
cache="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}"
all_tools=(kubernetes etcd kwok helm kubo versitygw chart-testing prometheus actionlint kube-router)

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

tool_key() { # <tool>: a short hash of everything that decides the tool's binaries
  { go env GOVERSION; cat "$here/$1/go.mod" "$here/$1/go.sum"; } | sha256sum | cut -c1-16
}

tool_dir() { echo "$cache/bin/$1-$(tool_key "$1")"; }

ldflags_for() { # <tool>: version stamps, so the binaries report their real versions
  case "$1" in
    kubernetes)
      # The same variables upstream's hack/lib/version.sh sets: kubectl, helm and kwokctl read them.
      local minor build_date flags="-s -w" p
      minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
      build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        flags+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
      done
      echo "$flags" ;;
    helm)
      # Without these, helm reports v3-dev and lints/templates against Kubernetes 1.20.
      local minor
      minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
      echo "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" ;;
    versitygw)
      # Upstream's Makefile sets these; otherwise `versitygw --version` reports "git".
      echo "-s -w -X main.Version=$VERSITYGW_VERSION -X main.BuildTime=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ;;
    prometheus)
      # Module v0.MNN.P is Prometheus M.NN.P (v0.316.0 = 3.16.0), which `promtool --version` reports.
      local n="${PROMETHEUS_VERSION#v0.}" p=github.com/prometheus/common/version
      echo "-s -w -X $p.Version=$((${n%%.*} / 100)).$((${n%%.*} % 100)).${n#*.} -X $p.Branch=HEAD" \
        "-X $p.BuildDate=$(date -u +%Y%m%d-%H:%M:%S)" ;;
    chart-testing)
      echo "-s -w -X github.com/helm/chart-testing/v3/ct/cmd.Version=$CHART_TESTING_VERSION" ;;
    # kubo's version is a constant in its source; actionlint reads its module version: nothing to stamp.
    *) echo "-s -w" ;;
  esac
}

build_tool() { # <tool>
  local tool="$1" dir pkgs pkg name start
  dir="$(tool_dir "$tool")"
  if [ -f "$dir/.complete" ]; then
    echo "toolchain: $tool up to date in $dir"
    return
  fi
  mkdir -p "$dir.partial"
  # The tool directives of the wrapper module name the packages to build.
  mapfile -t pkgs < <(cd "$here/$tool" && go mod edit -json | sed -n '/"Tool"/,/]/s/.*"Path": "\(.*\)".*/\1/p')
  for pkg in "${pkgs[@]}"; do
    [ -n "$pkg" ] || continue
    name="$(basename "$pkg")"
    [ "$name" != v3 ] || name=etcd   # go.etcd.io/etcd/server/v3 is etcd's main package
    start=$SECONDS
    echo "toolchain: building $name ($tool) ..."
    (cd "$here/$tool" && go build -p 2 -trimpath -tags selinux,notest -ldflags "$(ldflags_for "$tool")" \
      -o "$dir.partial/$name" "$pkg")
    echo "toolchain: built $name in $((SECONDS - start))s"
  done
  if [ "$tool" = chart-testing ]; then
    # ct reads its default yamllint and Chart.yaml schema configs from etc/, as in its release archive.
    local module
    module="$(cd "$here/$tool" && go list -m -f '{{.Dir}}' github.com/helm/chart-testing/v3)"
    mkdir -p "$dir.partial/etc" && cp "$module/etc/chart_schema.yaml" "$module/etc/lintconf.yaml" "$dir.partial/etc/"
    chmod u+w "$dir.partial/etc/"*
  fi
  rm -rf "$dir" && mv "$dir.partial" "$dir" && touch "$dir/.complete"
}

if [ "${1:-}" = "--path" ]; then
  shift
  path="" missing=() wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=("${all_tools[@]}")
  for t in "${wanted[@]}"; do
    [ -d "$here/$t" ] || { echo "toolchain: unknown tool: $t" >&2; exit 2; }
    d="$(tool_dir "$t")"
    if [ -f "$d/.complete" ]; then path="${path:+$path:}$d"; else missing+=("$t"); fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "toolchain: not built yet: ${missing[*]} (run toolchain/build.sh ${missing[*]})" >&2
    exit 1
  fi
  echo "$path"
  exit 0
fi

command -v go >/dev/null || { echo "toolchain: Go is required (go build); none on PATH" >&2; exit 1; }
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=("${all_tools[@]}")
total_start=$SECONDS
for t in "${tools[@]}"; do build_tool "$t"; done
echo "toolchain: ready in $((SECONDS - total_start))s"
