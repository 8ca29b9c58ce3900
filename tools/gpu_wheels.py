"""Wheels for running `bash tools/gpu_check.sh` on a GPU machine without internet access.

A GPU image usually brings its own CUDA torch (and numpy, scipy, pytest, ...) but not Ray,
DeepSpeed or pydantic. This downloads, on a machine with PyPI access, the wheels of those
packages at the versions installed here, for the GPU machine's Python and platform:

    python tools/gpu_wheels.py [--out .whl] [--python-version 3.12] [--slim-ray]

then, on the GPU machine, with the folder copied into the repository:

    python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site FNTK_GPU_PYTHON=python3 bash tools/gpu_check.sh

--slim-ray rewrites Ray's wheel without the parts fntk_dist never imports (the Java jars,
RLlib, Serve, the LLM libraries, the dashboard's client build): 41 MB instead of about 75, for a
transfer limit. DeepSpeed publishes no wheel; it is built here from its sdist (pure Python,
no ops compiled). docs/gpu/README.md records the runs made this way.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# What a CUDA image with torch typically lacks among the GPU tests' imports (checked on an
# H200 image: torch 2.11, numpy, scipy, pytest, hypothesis, pyarrow, pandas present).
PACKAGES = ["ray", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
            "hjson", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py",
            "tensorboardX"]
SOURCE_ONLY = ["deepspeed"]
SLIM_RAY = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/",
            "ray/dashboard/client/build/")


def pinned(name: str) -> str:
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        sys.exit(f"gpu_wheels: {name} is not installed here (run tools/bootstrap.sh first)")


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim(wheel: Path) -> None:
    """Rewrites wheel without the SLIM_RAY folders and source maps, RECORD to match."""
    out = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        kept, record = [], None
        for info in src.infolist():
            if info.filename.startswith(SLIM_RAY) or info.filename.endswith(".js.map"):
                continue
            if info.filename.endswith(".dist-info/RECORD"):
                record = info.filename
                continue
            data = src.read(info)
            dst.writestr(info, data)
            kept.append(_record_line(info.filename, data))
        dst.writestr(record, "\n".join([*kept, f"{record},,"]) + "\n")
    out.replace(wheel)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".whl"))
    ap.add_argument("--python-version", default="3.12",
                    help="the GPU machine's Python (major.minor)")
    ap.add_argument("--platform", default="manylinux2014_x86_64")
    ap.add_argument("--slim-ray", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version",
        args.python_version, "--platform", args.platform, "-d", str(args.out),
        *(pinned(p) for p in PACKAGES))
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(args.out),
        *(pinned(p) for p in SOURCE_ONLY))
    if args.slim_ray:
        for wheel in args.out.glob("ray-*.whl"):
            slim(wheel)
    total = sum(f.stat().st_size for f in args.out.glob("*.whl"))
    print(f"gpu_wheels: {len(list(args.out.glob('*.whl')))} wheels, {total / 2**20:.0f} MiB "
          f"in {args.out}")


if __name__ == "__main__":
    main()
