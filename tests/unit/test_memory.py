"""fntk_dist.memory: with freed memory kept, a step's temporaries reuse the last step's pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Three 10 MB temporaries at once, freed together, 8 times (what a fast sketch's transform does
# every step): minor page faults of the last 4 rounds (the heap has grown to fit them by
# then), in a fresh process each way.
_ROUNDS = """
import json, resource, sys, torch
from fntk_dist.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for r in range(8):
    if r == 4:
        f0 = faults()
    ts = [torch.ones(10 << 18) for _ in range(3)]
    del ts
print(json.dumps({"applied": applied, "faults": (faults() - f0) / 4}))
"""


# glibc's starting mmap threshold (128 KiB), held fixed: by default glibc raises it as blocks are
# freed, and whether the freed heap top is then given back depends on where other small blocks
# happened to land, so the baseline would fault or not by chance. Held fixed, every 10 MB block
# is mapped and unmapped each round; keep_freed_memory's mallopt overrides it.
_BASELINE_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True,
                         check=True, env=_BASELINE_ENV)
    return json.loads(out.stdout)


def test_freed_temporaries_are_not_faulted_in_again():
    kept = _faults("keep")
    if not kept["applied"]:
        pytest.skip("not glibc: keep_freed_memory changes nothing here")
    # 30 MB a round are 7680 pages: given back and faulted in again by default, reused when kept.
    assert _faults("default")["faults"] > 1000
    assert kept["faults"] < 100
