#!/usr/bin/env bash
# Creates .venv (if missing) and installs fntk-dist with its dev extra, pinned to the CPU build
# of torch. Sourced by launch/quickstart.sh and tools/test.sh; safe to run again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FNTK_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "[bootstrap] creating $venv"
    "$python" -m venv "$venv"
fi
stamp="$venv/.fntk-installed"
# Reinstall only when the project's requirements changed since the last install.
want="$(cat "$root/pyproject.toml" "$root/tools/constraints-cpu.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[bootstrap] installing fntk-dist and its dependencies into $venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -c "$root/tools/constraints-cpu.txt" torch
    "$venv/bin/python" -m pip install -q -c "$root/tools/constraints-cpu.txt" -e "$root[dev]"
    echo "$want" > "$stamp"
fi
