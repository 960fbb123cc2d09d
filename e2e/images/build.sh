#!/usr/bin/env bash
# Builds the container images of the real-node tests without Docker or a registry, and writes a
# sourceable file naming them:
#
#   ${OCEAN_C2D_CACHE:-~/.cache/ocean-c2d}/images/images.env
#     PAUSE_IMAGE, OCEAN_C2D_IMAGE, PYTHON_IMAGE, ROOT_ALGO_IMAGE    the image names
#     PAUSE_ARCHIVE, OCEAN_C2D_ARCHIVE, ...                          their OCI archives, for
#                                                                    `ctr -n k8s.io images import`
#
#   pause       the kubelet's sandbox image, compiled from the kubernetes module's build/pause
#   python      a minbase Debian with python3 (and `python`), as root, like the upstream python images
#   algo-root   the same files configured like the published Ocean algorithm images (root, /root)
#   ocean-c2d   the Dockerfile's image: the project's locked wheels in /opt/venv, user 10001
#
# Each image's key hashes everything it is made from (these scripts, its part of recipe.json, and
# for ocean-c2d the project's sources, templates and CRDs), so a change rebuilds exactly the images it
# affects and a run with nothing to do takes about a second. Two intermediates are cached too: the
# debootstrap root filesystem (keyed by rootfs.sh and the recipe's "base") and the dependency wheels
# (keyed by wheels.sh, requirements.lock, pyproject.toml, the pip pin and the host Python). Everything
# is built in a temporary directory and renamed into place, so an interrupted build leaves nothing that
# looks complete. Entries no run has used for an hour are deleted.
#
#   e2e/images/build.sh      build what is missing (building needs root; cold: about 2 minutes)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${OCEAN_C2D_CACHE:-$HOME/.cache/ocean-c2d}"
out="$cache/images"
kinds=(pause python algo-root ocean-c2d)

# oci.py needs Python >= 3.11; the system's interpreter starts faster than a version manager's shim.
py=python3
[ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -c 'import tomllib' 2> /dev/null || py=/usr/bin/python3
export IMAGES_PYTHON="$py"
oci() { "$py" "$here/oci.py" "$@"; }
die() { echo "images: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f s", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "building $1 needs root (debootstrap, chroot, reading the root filesystem)"; }
need_command() { # <command> <debian package>: install the package when the command is missing
  command -v "$1" > /dev/null && return
  command -v apt-get > /dev/null || die "$1 is missing and there is no apt-get to install $2"
  need_root "$2"
  echo "images: installing $2 (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" > /dev/null
}

unmount_under() { # <dir>: unmount what is mounted below dir (an interrupted debootstrap), deepest first
  local m
  while read -r m; do
    umount "$m" 2> /dev/null || umount -l "$m"
  done < <(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

remove_tree() { # <dir>: never into a mount point that is still there
  unmount_under "$1"
  rm -rf --one-file-system "$1"
}

tmp="" base_dir="" wheels_dir="" pause_c="" build_detail="" # set by the functions below
cleanup() { [ -z "$tmp" ] || remove_tree "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
staging() { [ -n "$tmp" ] || tmp="$(mktemp -d "$out/.tmp-XXXXXX")"; }

run_logged() { # <log> <command...>: quiet unless it fails
  local log="$1"
  shift
  "$@" > "$log" 2>&1 || { tail -n 40 "$log" >&2; die "failed: $*"; }
}

put() { # <built> <final>: rename into place (atomic on one filesystem)
  mv -T "$1" "$2"
}

# --- keys -------------------------------------------------------------------------------------------

scripts=(e2e/images/build.sh e2e/images/oci.py)
declare -A key # the images' keys, by kind
mapfile -t sources < <(oci get project.sources)

pause_source() { # sets pause_c: pause.c of the kubernetes module the toolchain pins
  local dir
  command -v go > /dev/null || die "go is missing (the project's Go toolchain builds the pause binary)"
  dir="$(cd "$repo/toolchain/kubernetes" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json k8s.io/kubernetes \
    | "$py" -c 'import json, sys; m = json.load(sys.stdin); print(m.get("Dir") or sys.exit(m.get("Error", m)))')" \
    || die "go mod download k8s.io/kubernetes (in toolchain/kubernetes) failed: the pause source is not in the module cache"
  [ -f "$dir/build/pause/linux/pause.c" ] || die "no build/pause/linux/pause.c in $dir"
  pause_c="$dir/build/pause/linux/pause.c"
}

keys() {
  need_command gcc gcc
  pause_source
  base_key="$(oci key --root "$repo" --text "$(oci get base)" e2e/images/rootfs.sh)"
  wheels_key="$(oci key --root "$repo" --text "$(oci get project.pip)" --text "$("$here/wheels.sh" python)" \
    e2e/images/wheels.sh requirements.lock pyproject.toml)"
  key[pause]="$(oci key --root "$repo" --text "$(oci get images.pause)" --text "$(gcc --version | head -n 1)" \
    --text "$(sha256sum < "$pause_c")" "${scripts[@]}")"
  key[python]="$(oci key --root "$repo" --text "$(oci get images.python)" --text "$base_key" "${scripts[@]}")"
  key[algo-root]="$(oci key --root "$repo" --text "$(oci get images.algo-root)" --text "$base_key" "${scripts[@]}")"
  key[ocean-c2d]="$(oci key --root "$repo" --text "$(oci get images.ocean-c2d)" --text "$(oci get project)" \
    --text "$base_key" --text "$wheels_key" "${scripts[@]}" e2e/images/wheels.sh e2e/images/project.sh \
    "${sources[@]}" templates crds)"
}

key_of() { echo "${key[$1]}"; }
archive_of() { echo "$out/$1-$(key_of "$1").tar"; }

# --- intermediates ----------------------------------------------------------------------------------

base_rootfs() { # sets base_dir: the debootstrap root filesystem, built when missing
  local dir="$out/base-$base_key" start
  if [ ! -d "$dir" ]; then
    need_root "the base root filesystem"
    need_command debootstrap debootstrap
    staging
    echo "images: building the base root filesystem (debootstrap, about a minute)"
    start=$EPOCHREALTIME
    run_logged "$tmp/base.log" "$here/rootfs.sh" "$tmp/base"
    put "$tmp/base" "$dir"
    echo "images:   base root filesystem built in $(elapsed "$start") ($(du -sh "$dir" | cut -f1))"
  fi
  touch -c "$dir"
  base_dir="$dir"
}

project_sources() { # the recipe's project.sources staged into $tmp/src (what the Dockerfile copies)
  if [ ! -d "$tmp/src" ]; then
    mkdir "$tmp/src"
    (cd "$repo" && oci files "${sources[@]}" | tar --null --no-recursion -T - -cf -) | tar -xf - -C "$tmp/src"
  fi
}

dependency_wheels() { # sets wheels_dir: the locked dependencies' wheels and the pip venv, built when missing
  local dir="$out/wheels-$wheels_key" start
  if [ ! -d "$dir" ]; then
    staging
    project_sources
    echo "images: building the dependency wheels (pip wheel --constraint requirements.lock)"
    start=$EPOCHREALTIME
    run_logged "$tmp/wheels.log" "$here/wheels.sh" deps "$tmp/src" "$tmp/wheels"
    put "$tmp/wheels" "$dir"
    echo "images:   dependency wheels built in $(elapsed "$start") ($(find "$dir/wheels" -name '*.whl' | wc -l) wheels)"
  fi
  touch -c "$dir"
  wheels_dir="$dir"
}

# --- images: each writes $tmp/<kind>.tar; build() renames it into place ---------------------------

pack() { # <kind> <rootfs>
  run_logged "$tmp/$1.pack.log" nice -n 10 "$py" "$here/oci.py" pack --rootfs "$2" --image "$1" \
    --key "$(key_of "$1")" --out "$tmp/$1.tar"
}

build_pause() {
  local root="$tmp/pause-rootfs" tag
  mkdir -p "$root"
  tag="$(sed -n 's/^TAG ?= //p' "$(dirname "$pause_c")/../Makefile")"
  # As upstream's build/pause/Makefile (CFLAGS, then strip); the binary is the whole image.
  gcc -Os -Wall -Werror -static -DVERSION="v${tag:-unknown}-ocean-c2d" -o "$root/pause" "$pause_c"
  strip "$root/pause"
  pack pause "$root"
}

build_python() {
  base_rootfs
  pack python "$base_dir"
}

build_algo_root() {
  base_rootfs
  pack algo-root "$base_dir"
}

build_ocean_c2d() {
  local root="$tmp/ocean-c2d-rootfs" start venv
  base_rootfs
  dependency_wheels
  project_sources
  start=$EPOCHREALTIME
  run_logged "$tmp/project-wheel.log" "$here/wheels.sh" project "$tmp/src" "$wheels_dir" "$tmp/project-wheel"
  build_detail="project wheel $(elapsed "$start")"
  start=$EPOCHREALTIME
  cp -a "$base_dir" "$root"
  run_logged "$tmp/project.log" "$here/project.sh" "$root" "$wheels_dir/wheels" "$tmp/project-wheel" "$repo"
  # The entrypoint must run (all its imports resolve) before the image is called built.
  venv="$(oci get project.venv)"
  run_logged "$tmp/smoke.log" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1 \
    chroot --userspec="$(oci get images.ocean-c2d.config.User)" "$root" "$venv/bin/ocean-c2d" --help
  build_detail+=", rootfs+venv $(elapsed "$start")"
  start=$EPOCHREALTIME
  pack ocean-c2d "$root"
  rm -rf --one-file-system "$root"
  build_detail+=", pack $(elapsed "$start")"
}

build() { # <kind>
  local kind="$1" archive start
  archive="$(archive_of "$kind")"
  start=$EPOCHREALTIME
  if [ -f "$archive" ]; then
    touch -c "$archive"
    printf 'images: %-10s cached  (%s) %s\n' "$kind" "$(elapsed "$start")" "$(oci ref "$kind" "$(key_of "$kind")")"
    return
  fi
  need_root "the $kind image"
  staging
  build_detail=""
  "build_${kind//-/_}"
  put "$tmp/$kind.tar" "$archive"
  printf 'images: %-10s built   (%s%s, %s) %s\n' "$kind" "$(elapsed "$start")" "${build_detail:+: $build_detail}" \
    "$(du -h "$archive" | cut -f1)" "$(oci ref "$kind" "$(key_of "$kind")")"
}

write_env() {
  local kind var env="$out/images.env"
  {
    for kind in pause ocean-c2d python algo-root; do
      case "$kind" in
        ocean-c2d) var=OCEAN_C2D ;;
        algo-root) var=ROOT_ALGO ;;
        *) var="$(echo "$kind" | tr '[:lower:]' '[:upper:]')" ;;
      esac
      echo "${var}_IMAGE=$(oci ref "$kind" "$(key_of "$kind")")"
      echo "${var}_ARCHIVE=$(archive_of "$kind")"
    done
  } > "$env.tmp"
  mv -f "$env.tmp" "$env"
  echo "images: wrote $env"
}

remove_leftovers() { # what killed runs left (this run holds the lock: no other run is building)
  local entry
  for entry in "$out"/.tmp-* "$out"/*.tmp; do
    [ ! -e "$entry" ] || remove_tree "$entry"
  done
}

prune() { # entries of other keys that no run has used for an hour
  local entry kind keep
  for entry in "$out"/base-* "$out"/wheels-* "$out"/*.tar; do
    [ -e "$entry" ] || continue
    keep=""
    for kind in "${kinds[@]}"; do [ "$entry" != "$(archive_of "$kind")" ] || keep=1; done
    [ "$entry" != "$out/base-$base_key" ] && [ "$entry" != "$out/wheels-$wheels_key" ] || keep=1
    if [ -z "$keep" ] && [ -n "$(find "$entry" -maxdepth 0 -mmin +60)" ]; then
      remove_tree "$entry"
    fi
  done
}

mkdir -p "$out"
exec 9> "$out/.lock"
flock 9 # one build at a time: a second waits, then finds the images built
remove_leftovers
keys
for kind in "${kinds[@]}"; do build "$kind"; done
write_env
prune
