#!/usr/bin/env bash
# The local cluster's real node: a kubelet, containerd (runc, bridge CNI) and kube-router (only its
# NetworkPolicy firewall) in a network namespace of their own, joined to the control plane of
# e2e/cluster/cluster.sh, so tests marked `real` run real containers next to kwok's fake nodes.
#
#   e2e/cluster/node.sh prepare   packages, and the network namespace and veth (cluster.sh runs it
#                                 before it creates the control plane: the veth's IP must be local
#                                 when kwokctl writes the serving certificate)
#   e2e/cluster/node.sh up        start or repair the node (no-op when it is healthy); writes node.env
#   e2e/cluster/node.sh down      stop it and remove everything it made, then check that nothing is left
#   e2e/cluster/node.sh status    one line per part; exit 1 unless all are healthy
#   e2e/cluster/node.sh policy-stop|policy-start
#                                 for tests: stop kube-router and remove its rules (a cluster whose
#                                 network ignores NetworkPolicy), and start it again
#
# Needs root and apt-get (Debian family). Layout, all on this machine:
#
#   host netns                               netns ocean-c2d-node
#    oc2d-h 10.250.0.1/30  <== veth ==>  oc2d-n 10.250.0.2/30 (node InternalIP, kubelet :10250)
#    route 10.251.0.0/24 via 10.250.0.2      cni0 10.251.0.1/24, pods 10.251.0.x (bridge + host-local)
#    kube-apiserver on 0.0.0.0:<port>        no default route: pods reach nothing but this machine
#
# The host's ip_forward is never touched. State is under ${OCEAN_C2D_CACHE:-~/.cache/ocean-c2d}/cluster/node,
# runtime sockets under /run/ocean-c2d-node; logs in <state>/logs, PIDs in <state>/pids.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}"
state="$cache/cluster"                 # cluster.sh's state dir
node_state="$state/node"
admin_kubeconfig="$state/kubeconfig"
pki="$state/kwok/clusters/ocean-c2d/pki"  # kwokctl's PKI of cluster "ocean-c2d" (KWOK_WORKDIR=$state/kwok)
node_env="$state/node.env"
run_dir=/run/ocean-c2d-node
sock="$run_dir/containerd.sock"
logs="$node_state/logs"
pids="$node_state/pids"
pv_dir="$node_state/pv"

node_name=real-node-1
netns=ocean-c2d-node
host_if=oc2d-h
node_if=oc2d-n
host_ip=10.250.0.1
node_ip=10.250.0.2
pod_cidr=10.251.0.0/24
pod_gateway=10.251.0.1
service_cidr=10.0.0.0/24               # kube-apiserver's default --service-cluster-ip-range
label_key=ocean-c2d.local/node label_value=real
taint_key=ocean-c2d.local/real-node taint_value=true taint_effect=NoSchedule
storage_class=real-node-local
pool_label=ocean-c2d.local/pool=real-node
pool_size=40
nat_chain=OCEAN-C2D-SERVICES
packages=(containerd runc containernetworking-plugins iptables ipset conntrack openssl iproute2 util-linux)

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
in_node() { nsenter --net="/run/netns/$netns" -- "$@"; }
kc() { kubectl --kubeconfig "$admin_kubeconfig" --request-timeout=15s "$@"; }
ctr_() { ctr --address "$sock" --namespace k8s.io "$@"; }

# ---------------------------------------------------------------------------------------------------
# Preconditions and packages

preflight() { # fail at once, with what to do, where the real node cannot run
  local why=()
  [ "$(uname -s)" = Linux ] || why+=("this is not Linux")
  [ "$(id -u)" = 0 ] || why+=("it is not running as root")
  command -v apt-get >/dev/null && command -v dpkg-query >/dev/null || why+=("there is no apt-get (not a Debian-family system)")
  [ -d /sys/fs/cgroup ] || why+=("/sys/fs/cgroup is missing")
  if [ ${#why[@]} -gt 0 ]; then
    local reasons
    reasons="$(printf '%s; ' "${why[@]}")"
    log "the real node (kubelet, containerd and kube-router in a network namespace) needs root on a"
    log "Debian-family system (apt-get), but here ${reasons%; }."
    log "Run this as root on Debian or Ubuntu, or set OCEAN_C2D_REAL_NODE=0 to start only the control"
    log "plane with kwok's fake nodes (the tests marked 'real' then fail)."
    exit 1
  fi
}

ensure_packages() { # Debian's containerd, runc, CNI plugins and the netfilter tools, when missing
  local start missing=() p
  start="$(now)"
  for p in "${packages[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  mkdir -p "$logs"
  log "installing ${missing[*]} (apt-get; log $logs/apt.log) ..."
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"; } >"$logs/apt.log" 2>&1; then
    tail -n 20 "$logs/apt.log" >&2
    die "apt-get could not install ${missing[*]}; fix that, or set OCEAN_C2D_REAL_NODE=0 to run without the real node"
  fi
  log "packages installed in $(since "$start")"
}

use_toolchain() { # kubelet and kubectl (module kubernetes), kube-router
  local path tools=(kubernetes kube-router)
  if ! path="$("$repo/toolchain/build.sh" --path "${tools[@]}" 2>/dev/null)"; then
    "$repo/toolchain/build.sh" "${tools[@]}" >&2
    path="$("$repo/toolchain/build.sh" --path "${tools[@]}")"
  fi
  export PATH="$path:$PATH"
  command -v kubelet >/dev/null || die "no kubelet in the toolchain's kubernetes build ($path)"
}

# ---------------------------------------------------------------------------------------------------
# Network namespace, veth, route

netns_ok() { [ -e "/run/netns/$netns" ] && ip -n "$netns" link show lo >/dev/null 2>&1; }

network_ok() {
  netns_ok &&
    ip -br addr show dev "$host_if" 2>/dev/null | grep -q " UP .*$host_ip/30" &&
    ip -n "$netns" -br addr show dev "$node_if" 2>/dev/null | grep -q " UP .*$node_ip/30" &&
    ip route show "$pod_cidr" 2>/dev/null | grep -q "via $node_ip dev $host_if"
}

ensure_network() {
  network_ok && return 0
  local start
  start="$(now)"
  if [ -e "/run/netns/$netns" ] && ! netns_ok; then
    ip netns delete "$netns" 2>/dev/null || rm -f "/run/netns/$netns"   # left over, not a namespace any more
  fi
  netns_ok || ip netns add "$netns"
  ip -n "$netns" link set lo up
  if ! ip link show "$host_if" >/dev/null 2>&1; then
    ip -n "$netns" link delete "$node_if" 2>/dev/null || true
    ip link add "$host_if" type veth peer name "$node_if" netns "$netns"
  elif ! ip -n "$netns" link show "$node_if" >/dev/null 2>&1; then
    ip link delete "$host_if"   # its peer is somewhere else: start the pair again
    ip link add "$host_if" type veth peer name "$node_if" netns "$netns"
  fi
  ip addr replace "$host_ip/30" dev "$host_if"
  ip link set "$host_if" up
  ip -n "$netns" addr replace "$node_ip/30" dev "$node_if"
  ip -n "$netns" link set "$node_if" up
  ip route replace "$pod_cidr" via "$node_ip" dev "$host_if"
  # Inside the namespace only: forward between the pods' bridge and the veth, and pass bridged
  # traffic through iptables (kube-router's NetworkPolicy rules). The host's settings stay as they are.
  in_node sysctl -qw net.ipv4.ip_forward=1
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1
  fi
  log "network namespace $netns, veth $host_if $host_ip <-> $node_if $node_ip, route $pod_cidr in $(since "$start")"
}

# ---------------------------------------------------------------------------------------------------
# Processes: started with setsid inside the namespace, PID recorded, checked by PID and executable

pid_of() { # <name>: the recorded PID when that process still runs the expected executable
  local name="$1" pid exe
  [ -f "$pids/$name.pid" ] || return 1
  pid="$(cat "$pids/$name.pid")"
  [ -n "$pid" ] && exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  [ "$(basename "${exe% (deleted)}")" = "$name" ] || return 1
  echo "$pid"
}

start_daemon() { # <name> <command...>: the command's executable must be called <name>
  local name="$1"; shift
  mkdir -p "$logs" "$pids"
  echo "---- $(date -u +%FT%TZ) $*" >>"$logs/$name.log"
  # No job control here, so setsid does not fork and $! is the daemon itself (nsenter execs it).
  setsid nohup nsenter --net="/run/netns/$netns" -- "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name.pid"
  printf '%s\n' "$@" >"$pids/$name.cmd"
}

running() { # <pid>: exists and is not a zombie (an exited daemon waits for init to reap it)
  local stat
  read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat="${stat##*) }"
  [ "${stat:0:1}" != Z ]
}

stop_daemon() { # <name> [signal]: SIGTERM (or the signal), then SIGKILL after 15 s
  local name="$1" pid i
  if pid="$(pid_of "$name")"; then
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    for i in $(seq 150); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      log "$name (pid $pid) did not stop in 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pids/$name.pid" "$pids/$name.cmd"
}

same_command() { # <name> <command...>: the running daemon was started with exactly this command
  [ -f "$pids/$1.cmd" ] && diff -q <(shift; printf '%s\n' "$@") "$pids/$1.cmd" >/dev/null
}

render() { # <template> <output>: substitute the @NAME@ placeholders; exit 0 when the output changed
  local out="$2" tmp
  tmp="$(mktemp "$out.XXXXXX")"
  sed -e "s|@NODE_STATE@|$node_state|g" -e "s|@RUN_DIR@|$run_dir|g" -e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" \
    -e "s|@POD_CIDR@|$pod_cidr|g" -e "s|@POD_GATEWAY@|$pod_gateway|g" -e "s|@NODE_IP@|$node_ip|g" \
    -e "s|@CA_CRT@|$node_state/pki/ca.crt|g" -e "s|@TAINT_KEY@|$taint_key|g" \
    -e "s|@TAINT_VALUE@|$taint_value|g" -e "s|@TAINT_EFFECT@|$taint_effect|g" "$1" >"$tmp"
  if cmp -s "$tmp" "$out"; then rm -f "$tmp"; return 1; fi
  mv "$tmp" "$out"
}

# ---------------------------------------------------------------------------------------------------
# Images (e2e/images/build.sh) and containerd

ensure_images_built() { # the pause, operator, Python and algorithm images, as OCI archives
  local start
  start="$(now)"
  images_env="$cache/images/images.env"
  "$repo/e2e/images/build.sh" >&2
  [ -f "$images_env" ] || die "e2e/images/build.sh wrote no $images_env"
  # shellcheck source=/dev/null
  source "$images_env"
  : "${PAUSE_IMAGE:?images.env has no PAUSE_IMAGE}"
  log "images ready in $(since "$start")"
}

ensure_containerd() {
  local start cmd changed=0
  mkdir -p "$node_state/cni" "$node_state/cni-ipam" "$run_dir"
  render "$here/node-containerd.toml" "$node_state/containerd.toml" && changed=1
  render "$here/node-cni.conflist" "$node_state/cni/10-ocean-c2d-node.conflist" || true  # read per pod
  cmd=(containerd --config "$node_state/containerd.toml")
  if pid_of containerd >/dev/null && [ "$changed" = 0 ] && same_command containerd "${cmd[@]}" &&
    timeout 5 ctr --address "$sock" version >/dev/null 2>&1; then
    return 0
  fi
  start="$(now)"
  stop_daemon containerd
  start_daemon containerd "${cmd[@]}"
  local i
  for i in $(seq 300); do
    timeout 5 ctr --address "$sock" version >/dev/null 2>&1 && break
    pid_of containerd >/dev/null || { tail -n 20 "$logs/containerd.log" >&2; die "containerd exited"; }
    sleep 0.1
  done
  timeout 5 ctr --address "$sock" version >/dev/null 2>&1 || die "containerd did not answer in 30s ($logs/containerd.log)"
  log "containerd (pid $(pid_of containerd)) up in $(since "$start")"
}

ensure_imports() { # every *_IMAGE/*_ARCHIVE pair of images.env, imported unless containerd has that manifest
  local var name archive want present start
  present="$(ctr_ images ls | awk 'NR > 1 { print $1, $3 }')"
  while IFS= read -r var; do
    name="${!var}"
    archive="${var%_IMAGE}_ARCHIVE"
    archive="${!archive:-}"
    [ -n "$archive" ] || continue
    [ -f "$archive" ] || die "$var: archive $archive is missing (e2e/images/build.sh)"
    want="$(tar --occurrence=1 -xOf "$archive" index.json | grep -oE '"digest" *: *"sha256:[0-9a-f]{64}"' | head -n 1 | grep -oE 'sha256:[0-9a-f]{64}')" ||
      die "$archive has no index.json naming a manifest"
    grep -qxF "$name $want" <<<"$present" && continue
    start="$(now)"
    ctr_ images import "$archive" >"$logs/import-$var.log" 2>&1 || { cat "$logs/import-$var.log" >&2; die "ctr import of $archive failed"; }
    ctr_ images ls | awk 'NR > 1 { print $1, $3 }' | grep -qxF "$name $want" ||
      die "importing $archive gave no image $name with manifest $want (its index.json must name it)"
    log "imported $name in $(since "$start")"
  done < <(sed -n 's/^\([A-Z0-9_]*_IMAGE\)=.*/\1/p' "$images_env")
  # Earlier builds' images (their tags change with their content) would only fill the disk.
  # CRI also names each image by its ID (sha256:...): those go with their image.
  local stale
  mapfile -t stale < <(ctr_ images ls | awk -v keep="$(sed -n 's/^[A-Z0-9_]*_IMAGE=//p' "$images_env" | tr '\n' ' ')" '
    NR == 1 { n = split(keep, k, " "); for (i = 1; i <= n; i++) kept[k[i]] = 1; next }
    { ref[NR] = $1; digest[NR] = $3; if ($1 in kept) live[$3] = 1 }
    END { for (i in ref) if ((ref[i] ~ /^ocean\.local\// && !(ref[i] in kept)) || (ref[i] ~ /^sha256:/ && !(digest[i] in live))) print ref[i] }')
  if [ ${#stale[@]} -gt 0 ]; then
    ctr_ images rm "${stale[@]}" >/dev/null
    log "removed ${#stale[@]} image(s) of earlier builds: ${stale[*]}"
  fi
}

# ---------------------------------------------------------------------------------------------------
# Credentials: a node client certificate signed by kwokctl's CA; kubeconfigs that reach the API
# server over the veth

api_port() { kubectl --kubeconfig "$admin_kubeconfig" config view --minify -o jsonpath='{.clusters[0].cluster.server}' | sed 's|.*:||'; }

write_kubeconfig() { # <file> <user cert> <user key>
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: ocean-c2d
    cluster:
      server: https://$host_ip:$port
      certificate-authority: $node_state/pki/ca.crt
users:
  - name: user
    user:
      client-certificate: $2
      client-key: $3
contexts:
  - name: ocean-c2d
    context: {cluster: ocean-c2d, user: user}
current-context: ocean-c2d
EOF
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

ensure_credentials() {
  local dir="$node_state/pki" start
  mkdir -p "$dir"
  cmp -s "$pki/ca.crt" "$dir/ca.crt" || cp "$pki/ca.crt" "$dir/ca.crt"
  if ! { openssl verify -CAfile "$dir/ca.crt" "$dir/node.crt" >/dev/null 2>&1 &&
    openssl x509 -checkend 86400 -noout -in "$dir/node.crt" >/dev/null 2>&1; }; then
    start="$(now)"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$dir/node.key" -out "$dir/node.csr" \
      -subj "/O=system:nodes/CN=system:node:$node_name" 2>/dev/null
    openssl x509 -req -in "$dir/node.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -set_serial "0x$(openssl rand -hex 8)" \
      -days 365 -out "$dir/node.crt" \
      -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') 2>/dev/null
    rm -f "$dir/node.csr"
    chmod 0600 "$dir/node.key"
    log "node certificate (CN=system:node:$node_name, O=system:nodes) in $(since "$start")"
  fi
  write_kubeconfig "$node_state/kubelet.kubeconfig" "$dir/node.crt" "$dir/node.key"
  # kube-router reads pods, namespaces, NetworkPolicies and nodes cluster-wide: it uses kwokctl's admin.
  write_kubeconfig "$node_state/kube-router.kubeconfig" "$pki/admin.crt" "$pki/admin.key"
}

# ---------------------------------------------------------------------------------------------------
# kubelet

node_ready() { # [since epoch]: Ready, in a status the kubelet posted at or after that second
  local out ready beat
  out="$(kc get node "$node_name" -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{end}' 2>/dev/null)" || return 1
  read -r ready beat <<<"$out"
  [ "$ready" = True ] || return 1
  [ -z "${1:-}" ] || [ "$(date -d "$beat" +%s 2>/dev/null || echo 0)" -ge "$1" ]
}

kubelet_healthz() { # the kubelet's own health endpoint, inside the namespace (no curl needed)
  # shellcheck disable=SC2016
  timeout 3 nsenter --net="/run/netns/$netns" -- bash -c 'exec 3<>/dev/tcp/127.0.0.1/10248 &&
    printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && grep -q "^ok" <&3' 2>/dev/null
}

wait_node_ready() { # <timeout seconds> [since epoch]: the kubelet is healthy and its Node Ready
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    kubelet_healthz && node_ready "${2:-}" && return 0
    pid_of kubelet >/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# At start-up the kubelet sets vm.overcommit_memory=1, kernel.panic=10 and kernel.panic_on_oops=1
# machine-wide when they differ (protectKernelDefaults=true would make it refuse to start instead).
# So that this machine's kernel settings never change, the kubelet reads them, while it starts, from
# files bind-mounted over /proc/sys that already hold those values. They are unmounted once the new
# kubelet has posted a Ready status: the kubelet checks them (container manager start) before it
# can report Ready. Should a value have changed all the same, it is put back.
kubelet_sysctls=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
  kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)

mask_sysctls() {
  local kv key value file
  mkdir -p "$node_state/sysctl"
  : >"$node_state/sysctl/host"
  for kv in "${kubelet_sysctls[@]}"; do
    key="${kv%=*}" value="${kv#*=}" file="$node_state/sysctl/${key//\//.}"
    echo "$key=$(cat "/proc/sys/$key")" >>"$node_state/sysctl/host"
    [ "$(cat "/proc/sys/$key")" != "$value" ] || continue
    echo "$value" >"$file"
    mount --bind "$file" "/proc/sys/$key"
  done
}

unmask_sysctls() {
  local kv key value
  for kv in "${kubelet_sysctls[@]}"; do
    key="${kv%=*}"
    while grep -q " /proc/sys/$key " /proc/self/mountinfo; do umount "/proc/sys/$key"; done
  done
  [ -f "$node_state/sysctl/host" ] || return 0
  while IFS='=' read -r key value; do
    if [ "$(cat "/proc/sys/$key")" != "$value" ]; then
      log "warning: the kubelet changed $key; restoring this machine's value $value"
      echo "$value" >"/proc/sys/$key"
    fi
  done <"$node_state/sysctl/host"
  rm -f "$node_state/sysctl/host"
}

ensure_kubelet() {
  local start cmd changed=0 fresh
  mkdir -p "$node_state/kubelet" "$node_state/pod-logs" "$node_state/volume-plugins"
  printf 'nameserver 127.0.0.1\n' >"$node_state/resolv.conf"
  render "$here/node-kubelet.yaml" "$node_state/kubelet.yaml" && changed=1
  cmd=("$(command -v kubelet)" --config "$node_state/kubelet.yaml" --kubeconfig "$node_state/kubelet.kubeconfig"
    --hostname-override "$node_name" --node-ip "$node_ip" --node-labels "$label_key=$label_value"
    --root-dir "$node_state/kubelet" --cert-dir "$node_state/kubelet/pki" --v=2)
  if pid_of kubelet >/dev/null && [ "$changed" = 0 ] && same_command kubelet "${cmd[@]}" && wait_node_ready 20; then
    return 0
  fi
  start="$(now)"
  stop_daemon kubelet
  # Start in a fresh second, so that a Ready status stamped at or after it is the new kubelet's.
  sleep "$(awk -v t="$(now)" 'BEGIN { printf "%.3f", int(t) + 1.01 - t }')"
  fresh="$(date +%s)"
  trap unmask_sysctls EXIT
  mask_sysctls
  start_daemon kubelet "${cmd[@]}"
  if ! wait_node_ready 90 "$fresh"; then
    unmask_sysctls
    grep -E '^E|"Error"|failed' "$logs/kubelet.log" | tail -n 15 >&2 || true
    die "node $node_name is not Ready after 90s (kubelet log $logs/kubelet.log)"
  fi
  unmask_sysctls
  trap - EXIT
  log "kubelet (pid $(pid_of kubelet)) started, node $node_name Ready in $(since "$start")"
}

# ---------------------------------------------------------------------------------------------------
# kube-router (NetworkPolicy only) and the kubernetes Service

ensure_kube_router() {
  local start cmd i
  cmd=("$(command -v kube-router)" --kubeconfig "$node_state/kube-router.kubeconfig" --hostname-override "$node_name"
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false
    --service-cluster-ip-range "$service_cidr" --health-port=0 --metrics-port=0 --v=1)
  if pid_of kube-router >/dev/null && same_command kube-router "${cmd[@]}"; then
    return 0
  fi
  start="$(now)"
  stop_daemon kube-router
  start_daemon kube-router "${cmd[@]}"
  # It is enforcing once its top-level chains exist.
  for i in $(seq 300); do
    in_node iptables -S KUBE-ROUTER-FORWARD >/dev/null 2>&1 && break
    pid_of kube-router >/dev/null || { tail -n 20 "$logs/kube-router.log" >&2; die "kube-router exited"; }
    sleep 0.1
  done
  in_node iptables -S KUBE-ROUTER-FORWARD >/dev/null 2>&1 || die "kube-router set up no rules in 30s ($logs/kube-router.log)"
  log "kube-router (pid $(pid_of kube-router)) enforcing NetworkPolicy in $(since "$start")"
}

# No kube-proxy and no DNS: in the node's namespace, the kubernetes Service's ClusterIP:443 is DNATed
# to the API server on the host end of the veth, so in-cluster clients (KUBERNETES_SERVICE_HOST) work.
ensure_service_nat() {
  local want have
  service_ip="$(kc get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
  [ -n "$service_ip" ] || die "could not read the kubernetes Service's ClusterIP"
  want="-N $nat_chain
-A $nat_chain -d $service_ip/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination $host_ip:$port"
  have="$(in_node iptables -t nat -S "$nat_chain" 2>/dev/null || true)"
  if [ "$have" != "$want" ]; then
    in_node iptables -t nat -N "$nat_chain" 2>/dev/null || in_node iptables -t nat -F "$nat_chain"
    in_node iptables -t nat -A "$nat_chain" -d "$service_ip/32" -p tcp -m tcp --dport 443 -j DNAT --to-destination "$host_ip:$port"
    log "kubernetes Service $service_ip:443 -> $host_ip:$port in the node's namespace"
  fi
  local hook
  for hook in PREROUTING OUTPUT; do
    in_node iptables -t nat -C "$hook" -j "$nat_chain" 2>/dev/null || in_node iptables -t nat -I "$hook" 1 -j "$nat_chain"
  done
}

# ---------------------------------------------------------------------------------------------------
# Storage: class real-node-local and its pool of static 0777 hostPath PVs

ensure_storage() {
  local start name phase available=0 gone=() known=() new=() d i
  start="$(now)"
  kc apply -f "$here/node-storage.yaml" >/dev/null
  mkdir -p "$pv_dir"
  while read -r name phase; do
    [ -n "$name" ] || continue
    case "$phase" in
      Available) available=$((available + 1)); known+=("$name") ;;
      Released | Failed) gone+=("$name") ;;
      *) known+=("$name") ;;
    esac
  done < <(kc get pv -l "$pool_label" -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}')
  if [ ${#gone[@]} -gt 0 ]; then
    kc delete pv --wait=false "${gone[@]}" >/dev/null
  fi
  for d in "$pv_dir"/*; do   # directories of deleted PVs, or of a previous control plane's
    [ -d "$d" ] || continue
    printf '%s\n' "${known[@]}" | grep -qxF "$(basename "$d")" || rm -rf --one-file-system "$d"
  done
  for ((i = available; i < pool_size; i++)); do new+=("real-node-pv-$(openssl rand -hex 4)"); done
  if [ ${#new[@]} -gt 0 ]; then
    for name in "${new[@]}"; do
      mkdir -p "$pv_dir/$name" && chmod 0777 "$pv_dir/$name"
      cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name
  labels: {${pool_label%=*}: ${pool_label#*=}}
spec:
  storageClassName: $storage_class
  capacity: {storage: 1Ti}
  accessModes: [ReadWriteOnce, ReadWriteMany, ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  volumeMode: Filesystem
  hostPath: {path: $pv_dir/$name, type: Directory}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/hostname, operator: In, values: [$node_name]}
EOF
    done | kc apply -f - >/dev/null
  fi
  if [ ${#new[@]} -gt 0 ] || [ ${#gone[@]} -gt 0 ]; then
    log "storage class $storage_class: ${#new[@]} PVs added, ${#gone[@]} released ones deleted, $pool_size available, in $(since "$start")"
  fi
}

# ---------------------------------------------------------------------------------------------------

write_env() {
  local tmp
  tmp="$(mktemp "$node_env.XXXXXX")"
  {
    echo "# The local cluster's real node (e2e/cluster/node.sh); sourceable."
    echo "REAL_NODE_NAME=$node_name"
    echo "REAL_NODE_LABEL=$label_key=$label_value"
    echo "REAL_NODE_TAINT=$taint_key=$taint_value:$taint_effect"
    echo "REAL_NODE_IP=$node_ip"
    echo "REAL_NODE_HOST_IP=$host_ip"
    echo "REAL_NODE_POD_CIDR=$pod_cidr"
    echo "REAL_NODE_NETNS=$netns"
    echo "REAL_NODE_STORAGE_CLASS=$storage_class"
    echo "API_SERVER_HOST_PORT=$host_ip:$port"
    echo "KUBERNETES_SERVICE_IP=$service_ip"
    grep -v '^[[:space:]]*\(#\|$\)' "$images_env"
  } >"$tmp"
  if cmp -s "$tmp" "$node_env"; then rm -f "$tmp"; else mv "$tmp" "$node_env"; fi
}

check_cert_sans() { # warn when pods could not verify the API server's certificate
  local sans
  sans="$(openssl x509 -noout -ext subjectAltName -in "$pki/admin.crt" 2>/dev/null || true)"
  grep -q "IP Address:$host_ip\b" <<<"$sans" || log "warning: the API server certificate has no SAN $host_ip (node and pods cannot verify it)"
  grep -q "IP Address:$service_ip\b" <<<"$sans" || log "warning: the API server certificate has no SAN $service_ip (in-cluster clients cannot verify it)"
}

# The node belongs to one control plane: when kwokctl's CA or the API port changed (the cluster was
# recreated), whatever the old kubelet left (pods, volumes, certificates, PVs) is dropped.
identity() { echo "$(sha256sum <"$pki/ca.crt" | cut -c1-16) $port"; }

reset_for_new_cluster() {
  [ -d "$node_state" ] || return 0
  [ "$(cat "$node_state/cluster-identity" 2>/dev/null)" != "$(identity)" ] || return 0
  if [ -f "$node_state/cluster-identity" ] || [ -d "$node_state/kubelet" ]; then
    log "the control plane is new: resetting the node (pods, kubelet state, PV pool)"
    stop_daemon kube-router
    stop_daemon kubelet
    remove_pods
    unmount_under "$node_state/kubelet"
    [ -z "$(mounts_under "$node_state/kubelet")" ] || die "mounts left under $node_state/kubelet"
    rm -rf --one-file-system "$node_state/kubelet" "$node_state/pki" "$pv_dir" "$node_state/pod-logs"
    remove_log_links
  fi
}

up() {
  local total
  total="$(now)"
  preflight
  ensure_packages
  ensure_network
  [ -f "$admin_kubeconfig" ] && [ -f "$pki/ca.key" ] || die "the control plane is not running: start it with e2e/cluster/cluster.sh up"
  use_toolchain
  mkdir -p "$node_state" "$logs" "$pids"
  port="$(api_port)"
  ensure_images_built
  ensure_containerd
  reset_for_new_cluster
  ensure_imports
  ensure_credentials
  identity >"$node_state/cluster-identity"
  ensure_kubelet
  ensure_kube_router
  ensure_service_nat
  ensure_storage
  check_cert_sans
  write_env
  log "real node $node_name ready in $(since "$total"); settings in $node_env"
}

# ---------------------------------------------------------------------------------------------------
# Teardown

mounts_under() { # <dir...>: mount points at or below the dirs, deepest first
  local d
  for d in "$@"; do
    awk -v d="$d" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo
  done | awk '{ print gsub("/", "/"), $0 }' | sort -rn | cut -d' ' -f2- | uniq
}

unmount_under() { # <dir...>
  local m round
  for round in 1 2 3 4 5; do
    mapfile -t mounted < <(mounts_under "$@")
    [ ${#mounted[@]} -gt 0 ] || return 0
    for m in "${mounted[@]}"; do
      umount "$m" 2>/dev/null || { [ "$round" -lt 3 ] || umount -l "$m" 2>/dev/null; } || true
    done
  done
}

cgroup_dirs() { # the kubelet's kubepods cgroups in every hierarchy
  awk '$9 == "cgroup" || $9 == "cgroup2" { print $5 }' /proc/self/mountinfo | while read -r m; do
    [ -d "$m/kubepods" ] && echo "$m/kubepods"
  done
}

pod_processes() { # PIDs in the kubepods cgroups
  local c
  for c in $(cgroup_dirs); do find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -un
}

shim_processes() { # containerd shims serving our containerd (their command line names its socket)
  local p comm args
  for p in /proc/[0-9]*; do
    read -r comm <"$p/comm" 2>/dev/null || continue
    case "$comm" in containerd-shim*) ;; *) continue ;; esac
    mapfile -d '' args <"$p/cmdline" 2>/dev/null || continue
    [[ " ${args[*]} " == *" $sock "* ]] && echo "${p#/proc/}"
  done
  return 0
}

remove_pods() { # every container and sandbox of our containerd, then whatever still runs in kubepods
  local ids id pid
  if pid_of containerd >/dev/null; then
    mapfile -t ids < <(ctr_ tasks ls -q 2>/dev/null)
    for id in "${ids[@]}"; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in "${ids[@]}"; do timeout 10 ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    local round
    for round in 1 2 3 4 5; do   # a container whose dead shim containerd is still cleaning up waits
      mapfile -t ids < <(ctr_ containers ls -q 2>/dev/null)
      [ ${#ids[@]} -gt 0 ] || break
      ctr_ containers delete "${ids[@]}" >/dev/null 2>&1 || sleep 0.3
      # Killed without a CNI DEL: libcni's result cache of each sandbox stays behind.
      for id in "${ids[@]}"; do rm -f "/var/lib/cni/results/cni-loopback-$id-lo"; done
    done
  fi
  for pid in $(pod_processes); do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f /var/lib/cni/results/ocean-c2d-node-* 2>/dev/null || true
  rm -rf "$node_state/cni-ipam/ocean-c2d-node"   # host-local's leases: no sandbox is left
}

remove_log_links() { # the kubelet's /var/log/containers links into our pod-logs dir
  [ -d /var/log/containers ] || return 0
  find /var/log/containers -maxdepth 1 -type l -lname "$node_state/*" -delete 2>/dev/null || true
}

remove_fixed_paths() { # what the kubelet puts at fixed places whatever its root dir, when empty then
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers 2>/dev/null || true
}

remove_cgroups() {
  local c d round
  for round in 1 2 3 4 5 6 7 8 9 10; do
    for c in $(cgroup_dirs); do
      find "$c" -depth -type d 2>/dev/null | while read -r d; do rmdir "$d" 2>/dev/null || true; done
    done
    [ -z "$(cgroup_dirs)" ] && return 0
    sleep 0.3
  done
}

leftovers() { # what down must have removed; prints one line per leftover
  local p
  mounts_under "$node_state" "$run_dir" | sed 's/^/mount /'
  grep -E " /proc/sys/(vm|kernel)/" /proc/self/mountinfo | awk '{ print "mount " $5 }'
  [ ! -e "/run/netns/$netns" ] || echo "netns $netns"
  ! ip link show "$host_if" >/dev/null 2>&1 || echo "link $host_if"
  [ -z "$(ip route show "$pod_cidr" 2>/dev/null)" ] || echo "route $pod_cidr"
  for p in containerd kubelet kube-router; do pid_of "$p" >/dev/null && echo "process $p"; done
  shim_processes | sed 's/^/process shim /'
  pod_processes | sed 's/^/process in kubepods /'
  cgroup_dirs | sed 's/^/cgroup /'
  [ ! -e "$run_dir" ] || echo "dir $run_dir"
  [ ! -e "$node_state" ] || echo "dir $node_state"
  find /var/log/containers -maxdepth 1 -type l -lname "$node_state/*" 2>/dev/null | sed 's/^/link /'
  return 0
}

down() {
  local start pid left line
  start="$(now)"
  if [ ! -e "$node_state" ] && [ ! -e "/run/netns/$netns" ] && [ ! -e "$run_dir" ] && ! ip link show "$host_if" >/dev/null 2>&1; then
    rm -f "$node_env"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "removing the real node needs root"
  rm -f "$node_env"
  # SIGKILL: everything they could have saved is deleted below.
  stop_daemon kube-router KILL
  stop_daemon kubelet KILL
  remove_pods
  stop_daemon containerd KILL
  for pid in $(shim_processes); do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in $(pod_processes); do kill -KILL "$pid" 2>/dev/null || true; done
  unmask_sysctls
  unmount_under "$node_state" "$run_dir"
  remove_cgroups
  ip netns delete "$netns" 2>/dev/null || rm -f "/run/netns/$netns"
  ip link delete "$host_if" 2>/dev/null || true
  ip route del "$pod_cidr" 2>/dev/null || true
  remove_log_links
  remove_fixed_paths
  # containerd 1.6 keeps shim sockets and fifos in /run/containerd whatever its config says: removed
  # when no other containerd runs on this machine.
  if ! pgrep -x containerd >/dev/null && ! pgrep -f '^[^ ]*containerd-shim' >/dev/null; then
    rm -rf /run/containerd/s /run/containerd/fifo /run/containerd/runc
    rmdir /run/containerd 2>/dev/null || true
    rm -f /var/lib/cni/results/cni-loopback-*
    rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
  fi
  if [ -z "$(mounts_under "$node_state" "$run_dir")" ]; then
    rm -rf --one-file-system "$run_dir" "$node_state"
  fi
  left="$(leftovers)"
  if [ -n "$left" ]; then
    log "real node: not everything could be removed:"
    while IFS= read -r line; do log "  $line"; done <<<"$left"
    exit 1
  fi
  log "real node removed in $(since "$start"): no mounts, netns, veth, route, processes or kubepods cgroups left; host ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
}

status() {
  local ok=0 p
  report() { printf 'cluster: %-12s %s\n' "$1" "$2" >&2; }
  if network_ok; then report network "netns $netns, $host_if $host_ip <-> $node_if $node_ip, route $pod_cidr"; else report network "missing or incomplete"; ok=1; fi
  for p in containerd kubelet kube-router; do
    if pid_of "$p" >/dev/null; then report "$p" "pid $(pid_of "$p")"; else report "$p" "not running"; ok=1; fi
  done
  if [ -f "$admin_kubeconfig" ] && command -v kubectl >/dev/null && node_ready; then
    report node "$node_name Ready"
    report storage "$(kc get pv -l "$pool_label" --no-headers 2>/dev/null | awk '{ n[$5]++ } END { for (p in n) printf "%s=%d ", p, n[p] }')"
  else
    report node "$node_name not Ready"; ok=1
  fi
  if [ -f "$node_env" ]; then report env "$node_env"; else report env "no $node_env"; ok=1; fi
  return $ok
}

policy_stop() { # for tests: no NetworkPolicy engine (kube-router stopped, its rules and ipsets removed)
  local start
  start="$(now)"
  stop_daemon kube-router
  # kube-router v2.1.0's own --cleanup-config panics (in its service proxy's cleanup): its chains go
  # from the filter table here, then its ipsets.
  local rules set
  rules="$(in_node iptables-save -t filter | grep -vE 'KUBE-(ROUTER|POD-FW|NWPLCY)-')"
  in_node iptables-restore <<<"$rules"
  while read -r set; do
    in_node ipset destroy "$set"
  done < <(in_node ipset list -n | grep -E '^(KUBE-(SRC|DST)-|kube-router-)' || true)
  ! in_node iptables -S KUBE-ROUTER-FORWARD >/dev/null 2>&1 || die "kube-router's rules are still there"
  log "kube-router stopped and its rules removed in $(since "$start") (node.sh policy-start or up starts it again)"
}

case "${1:-}" in
  prepare) preflight; ensure_packages; ensure_network ;;
  policy-stop) preflight; use_toolchain; policy_stop ;;
  policy-start) preflight; use_toolchain; ensure_kube_router ;;
  up) up ;;
  down) down ;;
  status)
    path="$("$repo/toolchain/build.sh" --path kubernetes 2>/dev/null)" && export PATH="$path:$PATH"
    status ;;
  *) echo "usage: $0 prepare|up|down|status|policy-stop|policy-start" >&2; exit 2 ;;
esac
