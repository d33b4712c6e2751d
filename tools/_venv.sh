# Sourced by tools/*.sh: create .venv from requirements.lock once, then activate it.
# The lock pins exact versions; setup.py's console scripts are (re)installed with the package.
# The lock pins exact versions for Python 3.11 (CPU jax, CPU torch 2.13.0).
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.lock-$(cat requirements.lock setup.py | sha1sum | cut -c1-12)  # re-install when either changes
if [ ! -f "$stamp" ]; then
  echo "[stp_jax] installing .venv from requirements.lock (first run only)..." >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --no-deps -r requirements.lock  # the lock is complete: no resolver run
  .venv/bin/python -m pip install -q --no-deps -e .
  .venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check; exit 1; }  # the lock is consistent
  rm -f .venv/.lock-*; touch "$stamp"
fi
source .venv/bin/activate
