#!/usr/bin/env bash
# Run BVLC Caffe's own pycaffe test suite, unchanged, against minicaffe's drop-in.
#
# usage: scripts/run_pycaffe_tests.sh CAFFE_SOURCE_TREE [pytest args...]
#   e.g. scripts/run_pycaffe_tests.sh /work/caffe-build/caffe -q
# The test files are copied from CAFFE_SOURCE_TREE/python/caffe/test/ into a temporary folder
# (they are never part of this project) and run with pytest through
# `python -m minicaffe.pycaffe -m pytest`, so `import caffe` resolves to minicaffe.pycaffe.

set -euo pipefail
src=${1:?usage: $0 CAFFE_SOURCE_TREE [pytest args...]}
shift
tests="$src/python/caffe/test"
if [ ! -d "$tests" ]; then
    echo "error: $tests: no such folder (give the root of a Caffe source tree)" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
files="test_net.py test_io.py test_solver.py test_python_layer.py test_python_layer_with_param_str.py
       test_layer_type_list.py test_net_spec.py test_coord_map.py"
for f in $files; do
    cp "$tests/$f" "$tmp/"
done
cd "$tmp"
# the repository first on the path: this checkout's minicaffe, not an installed one
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec python -m minicaffe.pycaffe -m pytest -p no:cacheprovider \
    -o addopts="" --rootdir "$tmp" "$@" $files
