"""Storage that refuses writes: a full file system and a read-only one, made by the test
(tmpfs mounts, as root). One line, a non-zero exit, and no store or summary left half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fntk_dist.cli.main import main
from fntk_dist.gram import TileStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

CONFIG = {
    "model": {"mode": "dense", "m": 256, "dtype": "float64"},
    "data": {"source": "sphere", "n": 200, "d": 8},
    "train": {"steps": 3, "ntk_every": 0},
    "gram": {"tile": 20},
    "tracking": {"wandb": False},
}


@pytest.fixture
def mount(tmp_path):
    made = []

    def tmpfs(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        made.append(point)
        return point

    yield tmpfs
    for point in made:
        subprocess.run(["umount", "-l", str(point)], check=False)


def run(tmp_path: Path, *args: str) -> int:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return main([args[0], str(path), *args[1:], "--quiet"])


def test_full_disk_is_one_line_and_leaves_a_sound_store(tmp_path, mount, capsys):
    full = mount("full", "size=160k")  # room for some of the 55 tiles (3.2 kB each), not all
    assert run(tmp_path, "gram", "--out", str(full / "g")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert not (full / "g" / "summary.json").exists()
    shutil.copytree(full / "g", tmp_path / "copy")  # verifying rewrites the manifest: not here
    store = TileStore.open(tmp_path / "copy")
    done, corrupt = store.verify()
    assert corrupt == [] and 0 < len(done) < len(store.all_tiles())


def test_read_only_out_is_one_line(tmp_path, mount, capsys):
    ro = mount("ro", "size=1m,ro")
    assert run(tmp_path, "train", "--out", str(ro / "t")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0], err
