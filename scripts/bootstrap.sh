# Sourced by scripts/demo.sh and scripts/test.sh: a virtualenv in .venv with the project
# installed (again only when pyproject.toml changed), then PostgreSQL and Redis reachable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "dataengine needs Python 3.11 or newer as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing dataengine and its dependencies into .venv"
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip \
         && .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]'; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "installing dependencies failed; the whole log is in $log" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
.venv/bin/python scripts/ensure_services.py
