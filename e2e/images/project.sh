#!/usr/bin/env bash
# The project image's root filesystem, the Dockerfile's final stage done with chroot: the user, the
# wheels installed offline into a virtualenv, the built-in templates and CRDs. Called by build.sh.
#
#   e2e/images/project.sh <rootfs> <wheels-dir>... <repo>
#       <rootfs>: a copy of the base root filesystem, changed in place; every *.whl of the wheel
#       directories is installed; templates/crds come from <repo> (the recipe's "project.copy").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${IMAGES_PYTHON:-python3}" # the interpreter build.sh chose for oci.py
recipe() { "$py" "$here/oci.py" get "$1"; }
rootfs="$1"
repo="${*: -1}"
wheel_dirs=("${@:2:$#-2}")

# A clean environment: none of this machine's pip settings (find-links, certificates) in the chroot.
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$rootfs" "$@"; }

mapfile -t useradd < <(recipe project.useradd)
in_root useradd "${useradd[@]}"

venv="$(recipe project.venv)"
mkdir "$rootfs/wheels"
for d in "${wheel_dirs[@]}"; do cp "$d"/*.whl "$rootfs/wheels/"; done
in_root python3 -m venv "$venv"
in_root sh -c "nice -n 10 $venv/bin/pip install --quiet --no-cache-dir --no-index --disable-pip-version-check /wheels/*.whl"
rm -rf "$rootfs/wheels"
# Exactly the locked versions: requirements.lock (make lock, pip-compile with hashes) pins every
# runtime dependency, setuptools included (aioipfs needs it at run time); its `name==version` lines are
# compared with what the venv holds but pip itself.
lock="$repo/$(recipe project.constraint)"
normalized() { awk -F'==' '{ n = tolower($1); gsub(/[-_.]+/, "-", n); print n "==" $2 }' | sort; }
if ! diff -u <(grep -oE '^[A-Za-z0-9][A-Za-z0-9._-]*==[^ ;\\]+' "$lock" | normalized) \
  <(in_root "$venv/bin/pip" list --format=freeze --disable-pip-version-check --exclude ocean-c2d \
    --exclude pip --exclude wheel --exclude distribute | normalized) >&2; then
  echo "project.sh: the image's packages differ from $lock (above)" >&2
  exit 1
fi

# COPY <src> <dest>: the files git would commit (or the tree outside git), owned by root.
"$py" "$here/oci.py" get project.copy | "$py" -c 'import json, sys
for src, dest in json.load(sys.stdin).items(): print(src, dest)' | while read -r src dest; do
  mkdir -p "$rootfs$dest"
  (cd "$repo" && "$py" "$here/oci.py" files "$src" | tar --null --no-recursion -T - -cf -) \
    | tar -xf - -C "$rootfs$dest" --strip-components=1 --no-same-owner
done
