#!/usr/bin/env bash
# Build a wheelhouse: the mlp wheels of DIST plus every third-party wheel that uv.lock pins for a
# selection of workspace packages and extras, hash-checked, so that an install from it needs no
# index (`--no-index --find-links`). The images' builder stages and tools/ci/wheel_check.sh both
# run this script, so CI installs exactly what the images install.
#
# usage: wheelhouse.sh OUT DIST SELECTION...
#   SELECTION is passed to `uv export`, e.g. --package mlp-serve --extra cuda
# WHEELHOUSE_PYTHON (default 3.11) is the Python whose wheels are fetched: the images' Python.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 OUT DIST --package NAME [--package NAME] [--extra EXTRA]..." >&2; exit 2; }
out=$1 dist=$2
shift 2
python=${WHEELHOUSE_PYTHON:-3.11}
root=$(cd "$(dirname "$0")/../.." && pwd)
compgen -G "$dist/mlp_*.whl" >/dev/null || { echo "no mlp wheels in $dist (uv build --all-packages)" >&2; exit 1; }

mkdir -p "$out"
requirements="$out/requirements.txt"
# The lock's pins for this selection, with hashes; the mlp packages come from DIST instead.
(cd "$root" && uv export --frozen --no-dev --no-emit-workspace --no-header --no-annotate \
    --quiet --output-file "$requirements" "$@")
# pip, not uv: uv has no download command. pip's own cache (PIP_CACHE_DIR, default
# ~/.cache/pip) makes a second run local. The markers in the requirements pick this platform.
uvx --quiet --python "$python" --from pip==26.3 pip download --quiet --disable-pip-version-check \
    --no-deps --only-binary=:all: --require-hashes --requirement "$requirements" --dest "$out"
cp "$dist"/mlp_*.whl "$out"/
echo "wheelhouse $out: $(find "$out" -name '*.whl' | wc -l) wheels for $*" >&2
