#!/usr/bin/env bash
# Proves the archives of images.env are what a node's containerd needs: starts a private containerd
# (config, root, state and sockets in a temporary directory; no CRI), imports every archive into the
# k8s.io namespace, lists the images, runs each image's command once, then stops containerd and
# removes everything it made. Prints how long each import took. Needs root, containerd, ctr and runc.
#
#   e2e/images/check.sh [images.env]      (default: the one e2e/images/build.sh writes)
set -euo pipefail
env_file="${1:-${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}/images/images.env}"
[ -f "$env_file" ] || { echo "check.sh: no $env_file (run e2e/images/build.sh)" >&2; exit 1; }
# shellcheck source=/dev/null
source "$env_file"
for var in PAUSE PYTHON ROOT_ALGO OCEAN_C2D; do
  image="${var}_IMAGE" archive="${var}_ARCHIVE"
  [ -n "${!image:-}" ] && [ -f "${!archive:-}" ] || { echo "check.sh: $env_file lacks $var" >&2; exit 1; }
done

d="$(mktemp -d /tmp/ocean-c2d-images-check.XXXXXX)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  fi
  awk -v d="$d/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2> /dev/null || umount -l "$m"
  done
  rm -rf --one-file-system "$d"
}
trap cleanup EXIT

cat > "$d/config.toml" << EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
EOF
containerd --config "$d/config.toml" > "$d/containerd.log" 2>&1 &
pid=$!
ctr=(ctr --address "$d/containerd.sock" -n k8s.io)
for _ in $(seq 100); do "${ctr[@]}" version > /dev/null 2>&1 && break; sleep 0.1; done
"${ctr[@]}" version > /dev/null || { tail -n 20 "$d/containerd.log" >&2; exit 1; }

for var in PAUSE PYTHON ROOT_ALGO OCEAN_C2D; do
  image="${var}_IMAGE" archive="${var}_ARCHIVE"
  start=$EPOCHREALTIME
  "${ctr[@]}" images import "${!archive}" > /dev/null
  awk -v a="$start" -v b="$EPOCHREALTIME" -v n="${!image}" 'BEGIN { printf "check: imported %s in %.1f s\n", n, b - a }'
done
"${ctr[@]}" images ls

run() { # <image> <id> <command...>: run once in the image (its config's user, env and workdir)
  local image="$1" id="$2"
  shift 2
  echo "check: $id: $*"
  "${ctr[@]}" run --rm "$image" "check-$id-$$" "$@"
}
run "$PYTHON_IMAGE" python python3 -c 'import sys; print(sys.version)'
run "$PYTHON_IMAGE" python-alias sh -c 'python -c "import sys; print(sys.executable)"; id'
# shellcheck disable=SC2016 # expanded in the container
run "$ROOT_ALGO_IMAGE" algo-root sh -c 'id; pwd; echo "HOME=$HOME"'
run "$OCEAN_C2D_IMAGE" ocean-c2d ocean-c2d --help
# shellcheck disable=SC2016 # expanded in the container
run "$OCEAN_C2D_IMAGE" ocean-c2d-user sh -c 'id; echo "PATH=$PATH"; ls /opt/ocean-c2d'
# pause runs until it is signalled.
"${ctr[@]}" run -d "$PAUSE_IMAGE" "check-pause-$$" > /dev/null
sleep 0.5
echo "check: pause: $("${ctr[@]}" task ls | grep "check-pause-$$")"
"${ctr[@]}" task kill "check-pause-$$"
for _ in $(seq 50); do "${ctr[@]}" task ls | grep -q "check-pause-$$.*STOPPED" && break; sleep 0.1; done
"${ctr[@]}" task delete "check-pause-$$" > /dev/null
"${ctr[@]}" container delete "check-pause-$$"
echo "check: all images imported and ran"
