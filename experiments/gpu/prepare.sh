#!/usr/bin/env bash
# Prepares a device call of experiments/gpu/issue17.sh, here (with network to the package
# index): the wheels the device image lacks (ml_collections; datasets and the pure-Python
# packages it needs beyond the image's) into .whl, and PTB into .gpu_data, both git-ignored.
# Then call the device tool with carry [".whl", ".gpu_data"] and
#   bash experiments/gpu/issue17.sh
set -eu
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
grep -qx '/.gpu_data/' .git/info/exclude || echo /.gpu_data/ >> .git/info/exclude
PY=${PY:-.venv/bin/python}
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl && mkdir -p .whl
for pkg in ml-collections datasets dill multiprocess fsspec; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg==$(version $pkg)"
done
rm -rf .gpu_data && mkdir -p .gpu_data
cp -r "$($PY -c 'from jax_lm.data import shared_data_dir; print(shared_data_dir())')/ptb" .gpu_data/
ls .whl; du -sh .whl .gpu_data
