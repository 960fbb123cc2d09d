#!/usr/bin/env bash
# The local Kubernetes cluster the e2e tests run against: real etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler built from source (toolchain/build.sh), launched by
# `kwokctl --runtime binary`, with kwok keeping fake nodes Ready and playing pod lifecycles, and one
# real node (e2e/cluster/node.sh: kubelet, containerd, kube-router in a network namespace) where
# containers really run.
#
#   e2e/cluster/cluster.sh up          build what is missing, start the cluster (no-op if it runs)
#   e2e/cluster/cluster.sh down        stop it and delete its state
#   e2e/cluster/cluster.sh kubeconfig  print the kubeconfig path
#   e2e/cluster/cluster.sh audit-log   print the API server's audit log path (audit-policy.yaml)
#   e2e/cluster/cluster.sh restart C   SIGKILL one control-plane component C and start it again (fault tests;
#                                      after etcd or kube-apiserver, kwok-controller is restarted too)
#
# The real node needs root and apt-get; OCEAN_C2D_REAL_NODE=0 starts the control plane and the fake
# nodes only. Everything lives under ${OCEAN_C2D_CACHE:-~/.cache/ocean-c2d}/cluster, outside the
# repository; the kubeconfig is at <that>/kubeconfig, the real node's settings at <that>/node.env.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}"
state="$cache/cluster"
name=ocean-c2d
kubeconfig="$state/kubeconfig"
export KWOK_WORKDIR="$state/kwok"
audit_log="$KWOK_WORKDIR/clusters/$name/logs/audit.log"

real_node="${OCEAN_C2D_REAL_NODE:-1}"
[ "$real_node" = 0 ] || real_node=1

log() { echo "cluster: $*" >&2; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

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
  sha256sum <"$here/pod-stages.yaml" >"$state/pod-stages.sha256"
  if [ "$real_node" = 1 ]; then
    # The serving certificate (kwokctl's admin certificate) also names the real node's way to the API
    # server (the host end of its veth) and the kubernetes Service, which in-cluster clients dial.
    cat >>"$state/kwok-config.yaml" <<'EOF'
---
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  kubeApiserverCertSANs: [10.250.0.1, 10.0.0.1, kubernetes, kubernetes.default, kubernetes.default.svc,
    kubernetes.default.svc.cluster.local]
EOF
  fi
}

# Extra component flags. kwok v0.8.0 groups --extra-args by component and indexes each group by the
# position of that component's first argument, so every component's first argument must come before
# any component's second one: the first block names each component once, the repeats follow.
extra_args() {
  local pki="$KWOK_WORKDIR/clusters/$name/pki" a
  local args=(kube-controller-manager=enable-hostpath-provisioner=true)
  if [ "$real_node" = 1 ]; then
    args+=(
      # kwok keeps only the fake nodes (annotated in nodes.yaml) and their pods; the kubelet has the real one.
      kwok-controller=manage-all-nodes=false
      # The API server reaches the kubelet (logs, exec) at its InternalIP, with a client certificate
      # the kubelet's x509 authentication accepts.
      kube-apiserver=kubelet-preferred-address-types=InternalIP
      kwok-controller=manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
      kube-apiserver=kubelet-client-certificate="$pki/admin.crt"
      kube-apiserver=kubelet-client-key="$pki/admin.key"
    )
  fi
  for a in "${args[@]}"; do printf -- '--extra-args\n%s\n' "$a"; done
}

# A control plane created without the real node's flags (OCEAN_C2D_REAL_NODE=0) has a kwok that
# manages every node, so it would fight the kubelet.
has_real_node_flags() {
  grep -q manage-nodes-with-annotation-selector "$KWOK_WORKDIR/clusters/$name/kwok.yaml" 2>/dev/null
}

# kwok reads its Stages only when the cluster is created: one created with other pod Stages is recreated
# (pod-stages.yaml's hash is written beside the config it went into).
has_current_stages() {
  [ "$(sha256sum <"$here/pod-stages.yaml")" = "$(cat "$state/pod-stages.sha256" 2>/dev/null)" ]
}

# A control plane created before the audit log existed is recreated (the benchmarks and e2e read it).
has_audit_log() {
  grep -q audit-policy-file "$KWOK_WORKDIR/clusters/$name/kwok.yaml" 2>/dev/null
}

up() {
  local total start args
  total="$(now)"
  # Before the control plane: fail fast where the real node cannot run, and create the veth before
  # kwokctl writes the serving certificate (it names every local IP in it).
  [ "$real_node" = 0 ] || "$here/node.sh" prepare
  [ "$real_node" = 0 ] || cluster_tools+=(kube-router)
  use_toolchain
  mkdir -p "$state"
  if reachable && has_audit_log && has_current_stages && { [ "$real_node" = 0 ] || has_real_node_flags; }; then
    log "control plane already running ($kubeconfig)"
  else
    start="$(now)"
    if reachable; then log "the control plane runs without the real node's flags, the audit log or the current pod Stages: recreating it"; fi
    # A cluster whose processes are gone (the machine or session ended) is recreated from scratch.
    kwokctl delete cluster --name "$name" >/dev/null 2>&1 || true
    rm -f "$kubeconfig"
    write_kwok_config
    mapfile -t args < <(extra_args)
    log "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok ..."
    kwokctl create cluster --name "$name" --runtime binary \
      --etcd-binary "$(command -v etcd)" \
      --kube-apiserver-binary "$(command -v kube-apiserver)" \
      --kube-controller-manager-binary "$(command -v kube-controller-manager)" \
      --kube-scheduler-binary "$(command -v kube-scheduler)" \
      --kwok-controller-binary "$(command -v kwok)" \
      --kube-authorization --kube-admission \
      --kube-audit-policy "$here/audit-policy.yaml" \
      "${args[@]}" \
      --config "$state/kwok-config.yaml" \
      --kubeconfig "$kubeconfig" \
      --wait 3m >&2
    log "control plane up in $(since "$start")"
  fi
  start="$(now)"
  kubectl --kubeconfig "$kubeconfig" apply -f "$here/nodes.yaml" -f "$here/storage.yaml" >/dev/null
  kubectl --kubeconfig "$kubeconfig" wait --for=condition=Ready node -l type=kwok --timeout=120s >/dev/null
  log "fake nodes Ready in $(since "$start")"
  [ "$real_node" = 0 ] || "$here/node.sh" up
  log "ready in $(since "$total"); export KUBECONFIG=$kubeconfig"
}

down() {
  use_toolchain
  # The real node first, whatever OCEAN_C2D_REAL_NODE says now: its mounts must be gone before the
  # state directory is deleted (node.sh down fails, and stops this, when some are left).
  "$here/node.sh" down
  kwokctl delete cluster --name "$name" >&2 || true
  rm -rf --one-file-system "$state"
  log "deleted"
}

# restart <component> [seconds]: a crash and a restart of one control-plane process (etcd, kube-apiserver,
# ...): its process (kwokctl's pid file) is SIGKILLed, left down for `seconds` (default 0), then started again
# with the same command line, working directory and log; this waits until the API server is Ready again. The
# kubelet and the other components reconnect by themselves; kwok, the fake nodes' kubelet, is made whole
# again (restart_kwok) after a restart of etcd or kube-apiserver.
restart() {
  local component="${1:?usage: $0 restart etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok-controller [seconds]}"
  local down="${2:-0}" start
  use_toolchain
  start="$(now)"
  stop_component "$component"
  log "down for ${down}s"
  sleep "$down"
  [ "$component" != kwok-controller ] || release_kwok_leases
  start_component "$component"
  wait_ready "$component"
  log "$component restarted; the API server is Ready again after $(since "$start")"
  case "$component" in
    etcd | kube-apiserver) restart_kwok ;;
    kwok-controller) wait_kwok_leases ;;
  esac
}

# kwok v0.8.0 plays a pod's next Stage when a watch event shows the pod changed, and retries the Stage's
# write only when it failed with connection refused, 429, 503 or 504 (shouldRetry in its
# pkg/kwok/controllers/utils.go). A write the API server answers 500 is dropped: that is its answer to a
# request etcd dropped half-way (seen after `restart etcd`: the PATCH of a pod's Ready status got 500 "rpc
# error: code = Unavailable desc = error reading from server: EOF", and the pod stayed Pending for ever),
# and a request cut by a killed API server fails the same way. No later event comes for such a pod and kwok
# has no resync, whereas a real kubelet's status manager writes the status again until it is stored. So the
# simulation is restarted once the API server is Ready: a new kwok-controller lists every pod and plays each
# one's due Stage. This is the simulation's artefact, not something the operator can or should make up for.
restart_kwok() {
  log "restarting kwok-controller: a Stage write the outage failed is never retried by kwok"
  stop_component kwok-controller
  release_kwok_leases
  start_component kwok-controller
  wait_kwok_leases
}

# A new kwok-controller has a new holder identity (hostname and a random UUID) and takes over a fake node
# only when the dead one's node Lease has expired (nodeLeaseDurationSeconds, 200 s here), playing no Stage
# on its pods meanwhile. The dead holder's Leases are deleted, so the new one creates them and manages its
# nodes (and lists their pods) at once.
release_kwok_leases() {
  local nodes
  mapfile -t nodes < <(kubectl --kubeconfig "$kubeconfig" get nodes -l type=kwok -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  kubectl --kubeconfig "$kubeconfig" -n kube-node-lease delete lease --ignore-not-found "${nodes[@]}" >/dev/null
}

wait_kwok_leases() { # until kwok-controller holds every fake node's Lease again (it then plays their pods)
  local nodes
  mapfile -t nodes < <(kubectl --kubeconfig "$kubeconfig" get nodes -l type=kwok -o name | sed 's#^node/#lease/#')
  kubectl --kubeconfig "$kubeconfig" -n kube-node-lease wait --for=create --timeout=60s "${nodes[@]}" >/dev/null
  log "kwok-controller manages the fake nodes again"
}

# stop_component <component>: SIGKILL it and wait until it is gone; its command line is left in `argv`
# for start_component.
stop_component() {
  local component="$1" dir="$KWOK_WORKDIR/clusters/$name" pid
  local pidfile="$dir/pids/$component.pid"
  [ -f "$pidfile" ] || { log "no pid file for $component ($pidfile)"; exit 2; }
  pid="$(cat "$pidfile")"
  mapfile -d '' -t argv <"/proc/$pid/cmdline" || { log "$component (pid $pid) is not running"; exit 1; }
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  log "killed $component (pid $pid)"
}

start_component() { # <component>: start `argv` (stop_component's) with kwokctl's working directory and log
  local component="$1" dir="$KWOK_WORKDIR/clusters/$name"
  (cd "$dir" && exec setsid "${argv[@]}" >>"$dir/logs/$component.log" 2>&1 </dev/null) &
  echo $! >"$dir/pids/$component.pid"
  log "started $component again (pid $!)"
}

wait_ready() { # <component>: until the API server is Ready, 120 s at most
  local deadline=$((SECONDS + 120))
  until reachable; do
    [ "$SECONDS" -lt "$deadline" ] || { log "the API server is not Ready 120 s after restarting $1"; exit 1; }
    sleep 0.2
  done
}

case "${1:-}" in
  up) up ;;
  restart) shift; restart "$@" ;;
  down) down ;;
  kubeconfig) echo "$kubeconfig" ;;
  audit-log) echo "$audit_log" ;;
  stages) print_stages ;;  # for a cluster that runs kwok in-cluster (e2e/kind/run.sh)
  *) echo "usage: $0 up|down|kubeconfig|audit-log|stages|restart <component>" >&2; exit 2 ;;
esac
