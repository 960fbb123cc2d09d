#!/usr/bin/env bash
# The local Kubernetes cluster the e2e tests run against: real etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler built from source (toolchain/build.sh), launched by
# `kwokctl --runtime binary`, with kwok keeping fake nodes Ready and playing pod lifecycles.
#
#   e2e/cluster/cluster.sh up          build what is missing, start the cluster (no-op if it runs)
#   e2e/cluster/cluster.sh down        stop it and delete its state
#   e2e/cluster/cluster.sh kubeconfig  print the kubeconfig path
#
# Everything lives under ${OCEAN_C2D_CACHE:-~/.cache/ocean-c2d}/cluster, outside the repository;
# the kubeconfig is at <that>/kubeconfig.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}"
state="$cache/cluster"
name=ocean-c2d
kubeconfig="$state/kubeconfig"
export KWOK_WORKDIR="$state/kwok"

log() { echo "cluster: $*" >&2; }

cluster_tools=(kubernetes etcd kwok)

use_toolchain() {
  local path
  if ! path="$("$repo/toolchain/build.sh" --path "${cluster_tools[@]}" 2>/dev/null)"; then
    "$repo/toolchain/build.sh" "${cluster_tools[@]}" >&2
    path="$("$repo/toolchain/build.sh" --path "${cluster_tools[@]}")"
  fi
  export PATH="$path:$PATH"
  export KWOK_KUBECTL_BINARY; KWOK_KUBECTL_BINARY="$(command -v kubectl)"
}

reachable() {
  [ -f "$kubeconfig" ] && kubectl --kubeconfig "$kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1
}

# kwokctl replaces its default Stages when it is given any, so the config holds kwok's own node
# Stages (read from the kwok module the toolchain was built from, not copied into this repo)
# followed by the pod Stages of pod-stages.yaml.
print_stages() { # kwok's own node Stages (read from the pinned kwok module) and our pod Stages
  local kwok_dir
  kwok_dir="$(cd "$repo/toolchain/kwok" && GOFLAGS=-mod=mod go mod download -json sigs.k8s.io/kwok | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  cat "$kwok_dir/kustomize/stage/node/fast/node-initialize.yaml"
  echo "---"
  cat "$kwok_dir/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"
  echo "---"
  cat "$here/pod-stages.yaml"
}

write_kwok_config() {
  print_stages >"$state/kwok-config.yaml"
}

up() {
  use_toolchain
  mkdir -p "$state"
  if reachable; then
    log "already running ($kubeconfig)"
  else
    local start=$SECONDS
    # A cluster whose processes are gone (the machine or session ended) is recreated from scratch.
    kwokctl delete cluster --name "$name" >/dev/null 2>&1 || true
    rm -f "$kubeconfig"
    write_kwok_config
    log "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok ..."
    kwokctl create cluster --name "$name" --runtime binary \
      --etcd-binary "$(command -v etcd)" \
      --kube-apiserver-binary "$(command -v kube-apiserver)" \
      --kube-controller-manager-binary "$(command -v kube-controller-manager)" \
      --kube-scheduler-binary "$(command -v kube-scheduler)" \
      --kwok-controller-binary "$(command -v kwok)" \
      --kube-authorization --kube-admission \
      --extra-args kube-controller-manager=enable-hostpath-provisioner=true \
      --config "$state/kwok-config.yaml" \
      --kubeconfig "$kubeconfig" \
      --wait 3m >&2
    log "control plane up in $((SECONDS - start))s"
  fi
  kubectl --kubeconfig "$kubeconfig" apply -f "$here/nodes.yaml" -f "$here/storage.yaml" >&2
  kubectl --kubeconfig "$kubeconfig" wait --for=condition=Ready node --all --timeout=120s >&2
  log "ready; export KUBECONFIG=$kubeconfig"
}

down() {
  use_toolchain
  kwokctl delete cluster --name "$name" >&2 || true
  rm -rf "$state"
  log "deleted"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  kubeconfig) echo "$kubeconfig" ;;
  stages) print_stages ;;  # for a cluster that runs kwok in-cluster (e2e/kind/run.sh)
  *) echo "usage: $0 up|down|kubeconfig|stages" >&2; exit 2 ;;
esac
