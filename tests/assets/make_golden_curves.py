"""Writes golden_curves.json: the loss curves of the quickstart (configs/quickstart.yaml) and of
one 2 x 1 mesh run (`fntk train --workers 2`), as the two-layer code computed them (made at
commit b12dceb, before the single training loop). tests/test_golden.py (quickstart) and
tests/test_dist_train.py (mesh) check the trainers against them. Regenerate only for an
intended change of what training computes:

    .venv/bin/python tests/assets/make_golden_curves.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from fntk_dist.cli.main import main as fntk

ROOT = Path(__file__).resolve().parents[2]
MESH_CONFIG = ROOT / "tests" / "assets" / "mesh_run.yaml"


def losses(run: Path) -> list[float]:
    table = pq.read_table(run / "metrics.parquet").to_pydict()
    return [v for v in table["loss"] if v is not None]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        qs, mesh = Path(tmp) / "qs", Path(tmp) / "mesh"
        assert fntk(["train", str(ROOT / "configs" / "quickstart.yaml"), "tracking.wandb=false",
                     "--out", str(qs), "--quiet"]) == 0
        assert fntk(["train", str(MESH_CONFIG), "--workers", "2", "--out", str(mesh),
                     "--quiet"]) == 0
        curves = {"quickstart": losses(qs), "mesh_2x1": losses(mesh)}
    path = Path(__file__).with_name("golden_curves.json")
    path.write_text(json.dumps(curves, indent=1) + "\n")
    print(f"{path}: " + ", ".join(f"{k} {len(v)} steps" for k, v in curves.items()))


if __name__ == "__main__":
    main()
