#!/usr/bin/env bash
# Create or update the Python venv used by the benchmarks (bench/schema/, bench/runner.py).
#
#   bash bench/setup-venv.sh            # venv at <repo>/.venv
#   VENV=/some/path bash bench/setup-venv.sh
#   PYTHON=python3.12 bash bench/setup-venv.sh
#
# Idempotent: installs missing apt build dependencies for mysqlclient (when
# running as root, or via sudo when available), creates the venv if it does not
# exist, and (re)installs bench/requirements.txt into it. Safe to run repeatedly.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"

apt_pkgs=(default-libmysqlclient-dev pkg-config python3-dev build-essential)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${apt_pkgs[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
fi

if ((${#missing[@]})); then
  echo "setup-venv: installing apt packages: ${missing[*]}" >&2
  sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "setup-venv: not root and no sudo; install ${missing[*]} by hand" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "setup-venv: creating venv at $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi

# Skip pip entirely when everything is already satisfied (fast CI re-runs).
if "$venv/bin/python" - "$req" >/dev/null 2>&1 <<'PY'
import sys
try:
    import django, psycopg, MySQLdb, pytest, xdist  # noqa: F401
except ImportError:
    sys.exit(1)
v = tuple(int(x) for x in django.__version__.split(".")[:2])
sys.exit(0 if v == (5, 2) and pytest.__version__ == "9.2.0" and xdist.__version__ == "3.8.0" else 1)
PY
then
  echo "setup-venv: $venv is up to date" >&2
else
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$req"
fi

"$venv/bin/python" -c 'import django, psycopg, MySQLdb, pytest, xdist; print("setup-venv: ok: Django", django.get_version(), "psycopg", psycopg.__version__, "mysqlclient", ".".join(map(str, MySQLdb.version_info[:3])), "pytest", pytest.__version__, "pytest-xdist", xdist.__version__)'
