#!/usr/bin/env bash
# Makes (on first use) a Python virtual environment with the packages of python/requirements.txt
# — PyTorch, diffusers, the scoring libraries the fixture scripts compare against, matplotlib for
# the figures of experiments/plot.py — and prints the path of its interpreter on the last line
# of its output:
#
#   PY=$(python/env.sh | tail -1); $PY python/make_fixtures.py
#
# The environment is kept outside the repository, in $DYDIFF_PYREF (default
# ~/.cache/dydiff-pyref). Development only: the tests and CI never need it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="${DYDIFF_PYREF:-${XDG_CACHE_HOME:-$HOME/.cache}/dydiff-pyref}"
probe="import torch, diffusers, safetensors, numpy, scipy, properscoring, scoringrules, matplotlib"
if ! "$env_dir/bin/python" -c "$probe" 2>/dev/null; then
  echo "installing python/requirements.txt into $env_dir (a few GB, a few minutes)..." >&2
  python3 -m venv "$env_dir"
  "$env_dir/bin/pip" install -q --upgrade pip >&2
  "$env_dir/bin/pip" install -q -r "$here/requirements.txt" >&2
fi
echo "$env_dir/bin/python"
