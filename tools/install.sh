#!/usr/bin/env bash
# Create ./.venv (Python 3.11) and install distrl with the extras given as arguments
# (default: minihack,atari,dev). torch is pinned to the CPU build 2.13.0 so pip does not
# pull a multi-GB CUDA wheel; pyproject admits any torch>=2.13.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-minihack,atari,dev}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.distrl-installed-$(echo "$extras" | tr ',' '-')"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[${extras}]"
touch "$stamp"
