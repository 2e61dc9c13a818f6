#!/usr/bin/env bash
# Make the two benchmark venvs (both gitignored):
#   bench/.venv            the peers (supervisord, circus, honcho), psutil for run.py, profilers
#   bench/.venv-supervise  this project, installed as a user does (pip install, not editable: the
#                          editable import hook costs every supervise process ~10 ms); run.py
#                          installs the checkout again whenever it changed
# Two venvs because the PyPI package `supervisor` (supervisord) and this project's package are
# both imported as `supervisor`: the peers only ever run from their own console scripts.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# Versions known to work on Python 3.11 (circus 0.19 installs pyzmq and tornado from wheels).
PEERS=(
  "supervisor==4.3.0"
  "circus==0.19.0"
  "honcho==2.0.0"
  "psutil>=5.9"
  "py-spy==0.3.14"       # 0.4.x fails here: "Failed to find python version from target process"
  "pyinstrument>=4"
)

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q "${PEERS[@]}"

if [ ! -x .venv-supervise/bin/python ]; then
  "$PY" -m venv .venv-supervise
fi
.venv-supervise/bin/pip install -q .. "pyinstrument>=4"
rm -f .venv-supervise/checkout.sha256  # run.py stamps what it installs

for tool in .venv/bin/supervisord .venv/bin/supervisorctl .venv/bin/circusd .venv/bin/circusctl \
            .venv/bin/honcho .venv-supervise/bin/supervise; do
  [ -x "$tool" ] || { echo "setup: $tool is missing" >&2; exit 1; }
done
echo "bench: ready ($(.venv/bin/supervisord --version | head -1) supervisord," \
     "circus $(.venv/bin/circusd --version 2>/dev/null | head -1), $(.venv/bin/honcho --version 2>&1 | head -1);" \
     "supervise from $(cd .. && pwd))"
