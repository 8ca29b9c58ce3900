#!/usr/bin/env bash
# The GPU check, one command for any machine with a GPU (run it first there):
#
#     bash tools/gpu_check.sh [--out DIR] [--small] [bench_gpu.py options]
#
# Without CUDA it says so in one line and exits 0. With CUDA it finds a Python whose torch is a
# CUDA build, runs every `gpu`-marked test (tests/gpu), then tools/bench_gpu.py, and writes one
# report: DIR/report.md and DIR/report.json (DIR: --out, else $OUT, else gpu_report/), with the
# test log in DIR/pytest.log. Exit status: 0 when the tests and the benchmark both ran clean.
#
# Which Python (the CPU pin of tools/constraints-cpu.txt cannot run on a GPU):
#   1. FNTK_GPU_PYTHON, if set: a python whose environment has a CUDA torch (and the project's
#      dependencies, or internet access to install them);
#   2. else .venv-gpu (created here, seeing the system's site-packages, so a CUDA torch that
#      the machine's image provides is reused); when it has no CUDA torch, torch==2.13.0 is
#      installed from the default PyPI index, which serves the CUDA build (needs internet).
# The project's other dependencies (ray, deepspeed, pytest, ...) are installed into that
# environment only when one is missing (`pip install -e .[dev]`, which keeps the CUDA torch:
# the project's torch range is open).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "gpu_check: $*"; }

out="${OUT:-$root/gpu_report}"
bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        *) bench_args+=("$1"); shift ;;
    esac
done

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    say "no CUDA device here (nvidia-smi absent or failing): nothing to check"
    exit 0
fi

cuda_torch() { "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' \
    >/dev/null 2>&1; }

py="${FNTK_GPU_PYTHON:-}"
if [ -z "$py" ]; then
    venv="$root/.venv-gpu"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv --system-site-packages "$venv" || {
            say "cannot create $venv with python3 -m venv: set FNTK_GPU_PYTHON to a python" \
                "whose torch has CUDA"; exit 1; }
    fi
    py="$venv/bin/python"
    if ! cuda_torch "$py"; then
        say "installing torch==2.13.0 (the CUDA build, from the default PyPI index) into $venv"
        "$py" -m pip install -q torch==2.13.0 || true
    fi
fi
if ! cuda_torch "$py"; then
    say "no CUDA build of torch for $py: give this machine internet access to PyPI, or a" \
        "CUDA torch importable by python3 (the image's), or FNTK_GPU_PYTHON=/path/to/python" \
        "whose torch has CUDA"
    exit 1
fi
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    say "torch $("$py" -c 'import torch; print(torch.__version__)') sees no CUDA device:" \
        "nothing to check"
    exit 0
fi

# The modules the GPU tests and the benchmark import, beyond torch (not wandb: they run with
# tracking off, and fntk_dist imports it only when tracking.wandb is on).
missing() {
    "$py" - <<'EOF'
import importlib.util
mods = ["ray", "deepspeed", "pytest", "hypothesis", "pyarrow", "pydantic", "yaml", "numpy",
        "scipy", "matplotlib", "sklearn", "tqdm", "psutil", "pandas"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
EOF
}
if [ -n "$(missing)" ]; then
    say "installing the project's dependencies (missing: $(missing)), keeping the CUDA torch"
    "$py" -m pip install -q -e "$root[dev]" || true
fi
if [ -n "$(missing)" ]; then
    say "missing Python packages for $py: $(missing) (no internet? install them there)"
    exit 1
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE="${WANDB_MODE:-offline}"
mkdir -p "$out"
say "$("$py" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)')"
"$py" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/pytest.log"
tests_rc=${PIPESTATUS[0]}
"$py" tools/bench_gpu.py --out "$out" --pytest-log "$out/pytest.log" --pytest-rc "$tests_rc" \
    ${bench_args[@]+"${bench_args[@]}"}
bench_rc=$?
say "report: $out/report.md and $out/report.json (tests exit $tests_rc, benchmark exit $bench_rc)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
