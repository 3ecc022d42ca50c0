#!/usr/bin/env bash
# Creates .venv-sf: the Sample Factory 2 side of tools/bench/train_rate.py (tools/bench/sample_factory_appo.py).
#
# Sample Factory 2.1.1 pins numpy<2 and gymnasium<1.0, which distrl's own venv does not allow, so it gets its
# own virtualenv, as RLlib does (.venv-rllib). torch is pinned to the CPU wheel on local disk (an unpinned torch
# would pull a multi-GB CUDA wheel). nle 1.3.0 (the version distrl's venv runs) pins gymnasium==1.2.0, so nle and
# minihack go in with --no-deps after Sample Factory; their runtime deps (numpy, pybind11) come in explicitly.
# ale-py 0.12.1 (distrl's version, with the ROMs in its wheel) declares gymnasium>=1.0 for its gymnasium
# registration only; distrl's Atari adapter drives ale_py.ALEInterface directly (ale-py 0.9.x, the last to accept
# gymnasium 0.29, lacks ale_py.registration.rom_id_to_name, which the adapter uses to find ROMs), so it goes in
# with --no-deps too. distrl itself goes in with --no-deps (its MiniHack adapter and Atari preprocessing are
# what the benchmark runs; pyyaml comes explicitly).
#
# Usage (from the repo root):  bash tools/bench/install_sf.sh [VENV_DIR]   (default .venv-sf; idempotent)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/.venv-sf}"
STAMP="$VENV/.distrl-bench-installed"
PY="${PYTHON:-python3.11}"
if [[ -f "$STAMP" ]]; then echo "$VENV already installed"; exit 0; fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
P="$VENV/bin/python"
"$P" -m pip install -q --upgrade pip
"$P" -m pip install -q "torch==2.13.0"
"$P" -m pip install -q "sample-factory==2.1.1" "numpy<2" "gymnasium<1.0" "setuptools<81" minigrid pybind11 pyyaml
"$P" -m pip install -q --no-deps "nle==1.3.0" "minihack==1.0.2" "ale-py==0.12.1"
"$P" -m pip install -q --no-deps -e "$ROOT"
"$P" - <<'PY'
from importlib.metadata import version
import gymnasium, minihack, nle, numpy, sample_factory, torch, ale_py  # noqa: F401
env = gymnasium.make("MiniHack-Room-5x5-v0")
env.reset(seed=0)
from ale_py.registration import rom_id_to_name  # noqa: F401  (what distrl's Atari adapter needs)
print("ok", {p: version(p) for p in ("sample-factory", "torch", "numpy", "gymnasium", "nle", "minihack", "ale-py")})
PY
echo ok > "$STAMP"
