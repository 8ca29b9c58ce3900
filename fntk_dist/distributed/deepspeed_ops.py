"""DeepSpeed's CPU communication op, built once per node before the engines need it.

deepspeed.init_distributed JIT-compiles a small C++ op on CPU (about a minute, the first time)
under torch's lock file in the build folder. A process killed while compiling leaves that
lock behind and every later run then waits on it forever. The workers of a node take an flock
(released by the kernel when its holder dies) around the build, so the first one builds, the
others find it built, and a lock file older than any real build is known to be stale.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

STALE_AFTER_S = 600.0  # a real build takes about a minute on 2 cores


def build_comm_op() -> None:
    """Build (or find built) DeepSpeed's shared-memory comm op; a no-op where it has none."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops import __compatible_ops__
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not __compatible_ops__.get(builder.NAME, False):
        return
    build_dir = Path(_get_build_directory(builder.name, verbose=False))
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{builder.name}.fntk.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        baton = build_dir / "lock"
        if baton.exists() and time.time() - baton.stat().st_mtime > STALE_AFTER_S:
            baton.unlink(missing_ok=True)  # left by a build that was killed
        if not any(build_dir.glob("*.so")):
            print(f"DeepSpeed: building its CPU communication op in {build_dir} (first run "
                  "on this node only, about a minute)", flush=True)
        builder.load(verbose=False)
