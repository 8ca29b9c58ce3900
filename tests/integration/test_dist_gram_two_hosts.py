"""`fntk gram --address` on a real two-host Ray cluster (two network namespaces): shard
actors land on both hosts and the Gram equals the single-process closed form."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml
from netns_cluster import two_host_cluster
from netns_hosts import skip_without_netns

from fntk_dist import empirical_ntk
from fntk_dist.config import build_config
from fntk_dist.data import load_dataset
from fntk_dist.gram import load_gram

pytestmark = [pytest.mark.slow, skip_without_netns]

RAW = {
    "model": {"mode": "sketch_out", "m": 200, "k": 5, "sketch": "gaussian", "dtype": "float64"},
    "data": {"source": "sphere", "n": 30, "d": 8},
    "tracking": {"wandb": False},
}


def test_gram_on_two_hosts_matches_the_closed_form(tmp_path):
    cfg_path = tmp_path / "gram.yaml"
    cfg_path.write_text(yaml.safe_dump(RAW))
    out = tmp_path / "gram"
    with two_host_cluster() as c:
        res = c.run([sys.executable, "-m", "fntk_dist.cli.main", "gram", str(cfg_path),
                     "--workers", "2", "--tile", "8", "--address", c.address, "--out", str(out)],
                    timeout=240)
        assert res.returncode == 0, res.stderr[-3000:] + c.logs_tail()
        summary = json.loads((out / "summary.json").read_text())
        assert summary["shard_nodes"] == sorted([c.head_ip, c.worker_ip])
    cfg = build_config(RAW, source="test")
    data = load_dataset(cfg.data)
    ref = empirical_ntk(cfg.model.build(data.d), torch.from_numpy(data.x)).numpy()
    assert np.abs(load_gram(out) - ref).max() <= 1e-10 * np.abs(ref).max()
    assert summary["tiles"] == 10 and summary["lambda_min"] == pytest.approx(
        np.linalg.eigvalsh(ref)[0], rel=1e-8)
