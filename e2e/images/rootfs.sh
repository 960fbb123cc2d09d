#!/usr/bin/env bash
# The shared base root filesystem of the real-node images: a minbase Debian with the recipe's packages
# (e2e/images/recipe.json, "base"), from the mirror apt already uses, without apt's lists and caches or
# the docs. Called by build.sh, which keys it by this file and the recipe's "base" section.
#
#   e2e/images/rootfs.sh <dir>     build into <dir> (must not exist yet); needs root and debootstrap
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${IMAGES_PYTHON:-python3}" # the interpreter build.sh chose for oci.py
dir="$1"
recipe() { "$py" "$here/oci.py" get "$1"; }

suite="$(recipe base.suite)"
variant="$(recipe base.variant)"
want_python="$(recipe base.python)"
mapfile -t packages < <(recipe base.include)
{ read -r mirror && read -r keyring; } < <("$py" "$here/oci.py" mirror "$suite")
[ -f "$keyring" ] || { echo "rootfs.sh: keyring $keyring is missing (apt-get install debian-archive-keyring)" >&2; exit 1; }

include="$(IFS=,; echo "${packages[*]}")"
nice -n 10 debootstrap --variant="$variant" --include="$include" --keyring="$keyring" "$suite" "$dir" "$mirror"

# The Dockerfile's base is python:<want_python>: the same minor version, or the wheels do not fit.
have_python="$(chroot "$dir" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$have_python" != "$want_python" ]; then
  echo "rootfs.sh: $suite has Python $have_python, the recipe (and the Dockerfile) want $want_python" >&2
  exit 1
fi

# What an image does not need (as the slim Debian images leave out): apt's package lists and cache,
# logs, man pages, docs but the copyright files, translations.
cd "$dir"
rm -rf var/lib/apt/lists/* usr/share/man/* usr/share/info/* usr/share/lintian usr/share/linda
find var/cache/apt -type f -delete
find var/log -type f \( -name '*.log' -o -path 'var/log/apt/*' \) -delete
find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find usr/share/doc -mindepth 1 -type d -empty -delete
find usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -f var/cache/debconf/*-old var/lib/dpkg/*-old
# debootstrap copied this machine's name and resolver; the runtime provides its own.
: > etc/hostname
: > etc/resolv.conf
