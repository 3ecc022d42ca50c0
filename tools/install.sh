#!/usr/bin/env bash
# Create ./.venv (Python 3.11) and install distrl with the extras given as the first argument
# (default: minihack,atari,video). torch is pinned to the CPU build 2.13.0 so pip does not pull a
# multi-GB CUDA wheel; pyproject admits any torch>=2.13 (install a CUDA build yourself on GPU nodes).
# The miniworld extra also needs EGL/Mesa system libraries for headless rendering; as root on
# Debian they are installed with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-minihack,atari,video}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
if [[ ",$extras," == *",miniworld,"* ]] && command -v dpkg >/dev/null; then
  missing=()
  for p in libegl1 libegl-mesa0 libgl1-mesa-dri; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "install.sh: MiniWorld needs: sudo apt-get install ${missing[*]}" >&2
    fi
  fi
fi
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
