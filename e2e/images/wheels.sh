#!/usr/bin/env bash
# The wheels of the project image, built on this machine as the Dockerfile's build stage does
# (`pip wheel --require-hashes --no-deps -r requirements.lock`, then the project's own wheel, with its
# pinned pip), with a host Python of the image's minor version. Called by build.sh.
#
#   e2e/images/wheels.sh deps <src> <dir>
#       <dir>/venv: a virtualenv with the recipe's pip and the project's build requirements;
#       <dir>/wheels: the wheel of every locked dependency, each checked against its hashes in the lock
#       (a changed or substituted file fails the build), the project's own left out. build.sh keeps <dir> keyed
#       by this file, requirements.lock, pyproject.toml, the pip version and the host Python.
#   e2e/images/wheels.sh project <src> <deps-dir> <out>
#       the project's own wheel into <out>, offline (rebuilt for every project image)
#   e2e/images/wheels.sh python
#       print the host Python used (its path, then its `-VV`), for the key
# <src> holds the recipe's "project.sources" (what the Dockerfile copies into its build stage).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${IMAGES_PYTHON:-python3}" # the interpreter build.sh chose for oci.py
recipe() { "$py" "$here/oci.py" get "$1"; }

host_python() { # a host interpreter of the image's Python minor version that can make a venv
  local want candidate
  want="$(recipe base.python)"
  for candidate in "/usr/bin/python$want" "$(command -v "python$want" || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if "$candidate" -c 'import ensurepip, venv' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "wheels.sh: no host python$want with venv support (apt-get install python$want-venv)" >&2
  exit 1
}

build_requires() { # <src>: the [build-system] requires of pyproject.toml, one a line
  "$py" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' "$1/pyproject.toml"
}

case "${1:-}" in
  python)
    host="$(host_python)"
    echo "$host"
    "$host" -VV ;;
  deps)
    src="$2" dir="$3"
    mkdir -p "$dir/wheels"
    "$(host_python)" -m venv "$dir/venv"
    pip=("$dir/venv/bin/python" -m pip --quiet --disable-pip-version-check)
    mapfile -t requires < <(build_requires "$src")
    nice -n 10 "${pip[@]}" install "pip==$(recipe project.pip)" "${requires[@]}"
    # --no-deps: the lock is the whole dependency set; the image's offline install proves it complete.
    (cd "$src" && nice -n 10 "${pip[@]}" wheel --require-hashes --no-deps --wheel-dir "$dir/wheels" \
      --requirement "$(recipe project.constraint)") ;;
  project)
    src="$2" deps="$3" out="$4"
    mkdir -p "$out"
    # Offline and without build isolation: the deps venv has the build requirements.
    (cd "$src" && nice -n 10 "$deps/venv/bin/python" -m pip --quiet --disable-pip-version-check wheel \
      --no-index --no-deps --no-build-isolation --wheel-dir "$out" .) ;;
  *)
    echo "usage: wheels.sh deps <src> <dir> | project <src> <deps-dir> <out> | python" >&2
    exit 2 ;;
esac
