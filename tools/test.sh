#!/usr/bin/env bash
# The test command (README, .ci/run): install into ./.venv, lint, check import directions, run pytest.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m slow` for the learning runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh minihack,atari,miniworld,video,bench,dev
.venv/bin/ruff check distrl tests tools
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
