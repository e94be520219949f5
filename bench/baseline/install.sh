#!/usr/bin/env bash
# Creates bench/baseline/.venv and installs the pinned baseline stack
# (requirements.txt). Idempotent: does nothing when the venv already holds exactly
# these requirements (a stamp file keeps the hash of requirements.txt).
#   PYTHON=python3.11 bench/baseline/install.sh     # choose the interpreter
#   FORCE=1 bench/baseline/install.sh               # reinstall anyway
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$( (sha256sum "$req"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [[ "${FORCE:-0}" != 1 && -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "baseline: $venv is up to date"
    exit 0
fi

"$python" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed (Django 5.2)"'
if [[ ! -x "$venv/bin/python" ]]; then
    echo "baseline: creating $venv"
    "$python" -m venv "$venv"
fi
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
# Fail here, not in the middle of a benchmark, if anything is missing.
"$venv/bin/python" - <<'PY'
import channels, channels_redis, django, httptools, jwt, msgpack, psycopg, psycopg_pool, uvicorn, uvloop, websockets
print("baseline: Django", django.__version__, "| channels", channels.__version__,
      "| channels_redis", channels_redis.__version__, "| uvicorn", uvicorn.__version__,
      "| psycopg", psycopg.__version__, "| PyJWT", jwt.__version__)
PY
echo "$want" > "$stamp"
