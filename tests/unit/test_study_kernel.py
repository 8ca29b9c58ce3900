"""Analytic-only trials (study.kernel), the grid's ratio keys and seed modes, and the report's
statistics (study.stats)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fntk_dist.config import ConfigError, build_config
from fntk_dist.data import load_dataset
from fntk_dist.ntk.analytic import analytic_ntk
from fntk_dist.study import load_sweep
from fntk_dist.study.kernel import kernel_metrics, max_pair_distortion
from fntk_dist.study.stats import mean_ci, replicate_slopes, singular, slope_ci

SPHERE = {"source": "sphere", "n": 32, "d": 32}


def _cfg(model: dict, data: dict = SPHERE):
    return build_config({"model": model, "data": data}, source="test")


def test_srht_with_k_equal_d_a_power_of_two_is_exact():
    """All d rows of a signed, normalised Hadamard transform: an orthogonal map, so Z Z^T =
    X X^T and the kernel is the dense one, to round-off."""
    out = kernel_metrics(_cfg({"mode": "sketch_in", "m": 32, "k": 32, "sketch": "srht"}))
    assert out["lambda_inf_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert out["sketch_rel_err"] < 1e-13 and out["max_pair_distortion"] < 1e-12


def test_kernel_metrics_against_a_direct_computation():
    cfg = _cfg({"mode": "sketch_in", "m": 64, "k": 8, "sketch": "gaussian", "seed": 3})
    out = kernel_metrics(cfg)
    x = torch.as_tensor(load_dataset(cfg.data).x, dtype=torch.float64)
    v = cfg.model.build(d=32).layers[0].in_sketch.matrix  # the k x d Gaussian sketch
    z = x @ v.T
    lam = np.linalg.eigvalsh(analytic_ntk(z, None, train_output=False, depth=1).numpy())
    lam_dense = np.linalg.eigvalsh(analytic_ntk(x, None, train_output=False, depth=1).numpy())
    assert out["lambda_inf"] == pytest.approx(lam[0], rel=1e-10)
    assert out["lambda_inf_ratio"] == pytest.approx(lam[0] / lam_dense[0], rel=1e-10)
    assert out["condition_inf"] == pytest.approx(lam[-1] / lam[0], rel=1e-10)
    gx, gz = (x @ x.T).numpy(), (z @ z.T).numpy()
    assert out["sketch_rel_err"] == pytest.approx(
        np.linalg.norm(gz - gx, 2) / np.linalg.norm(gx, 2), rel=1e-10)
    # k = 8 < n = 32: Z Z^T has rank 8, so H_inf(Z) loses most of lambda_min.
    assert out["lambda_inf_ratio"] < 0.5


def test_max_pair_distortion_by_hand():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])  # a duplicate pair
    z = x * np.array([1.0, 0.5])  # halves the second axis
    # pairs (0,1): 1 -> 1; (0,2): 4 -> 1 (-3/4); (1,2): 5 -> 2 (-3/5); duplicate pair skipped
    assert max_pair_distortion(x, z) == pytest.approx(0.75)
    assert max_pair_distortion(x[2:], z[2:]) is None


def test_a_dense_net_measures_its_own_kernel_and_a_lowrank_net_has_none():
    dense = kernel_metrics(_cfg({"mode": "dense", "m": 8}))
    assert dense["lambda_inf_ratio"] == 1.0 and dense["sketch_rel_err"] == 0.0
    low = kernel_metrics(_cfg({"mode": "lowrank", "m": 8, "k": 4}))
    assert "lambda_inf" not in low and low["lambda_inf_dense"] == dense["lambda_inf_dense"]


def _sweep(tmp_path, **spec):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_sweep(path)


def test_k_per_d_sets_the_rank_and_a_kernel_sweep_raises_m_to_it(tmp_path):
    _, trials = _sweep(tmp_path, kind="kernel", base={"data": {"source": "sphere", "n": 16}},
                       grid={"d": [8, 32], "k_per_d": [0.25, 2], "mode": ["sketch_in", "dense"]})
    got = sorted((t.config.data.d, t.config.model.k, t.config.model.m) for t in trials
                 if t.config.model.mode == "sketch_in")
    assert got == [(8, 2, 2), (8, 16, 16), (32, 8, 8), (32, 64, 64)]
    assert sum(t.config.model.mode == "dense" for t in trials) == 2  # one per d: no rank
    assert all(t.kind == "kernel" and t.id.startswith("kernel-") for t in trials)


def test_k_per_d_needs_d(tmp_path):
    with pytest.raises(ConfigError, match="grid.k_per_d: needs data.d set"):
        _sweep(tmp_path, base={"data": {"source": "digits"}}, grid={"k_per_d": [0.5]})
    with pytest.raises(ConfigError, match="grid.k_per_n: expected a positive number"):
        _sweep(tmp_path, base={"data": {"source": "sphere", "n": 8, "d": 4}},
               grid={"k_per_n": [-1], "m": [64]})


def test_seed_modes(tmp_path):
    grid = {"mode": ["sketch_in"], "k": [4], "m": [16, 64], "seed": [0, 1]}
    base = {"data": {"source": "sphere", "n": 8, "d": 4}}
    _, nested = _sweep(tmp_path, base=base, grid=grid)
    assert sorted((t.config.model.m, t.config.model.seed) for t in nested) == [
        (16, 0), (16, 1), (64, 0), (64, 1)]
    _, indep = _sweep(tmp_path, base=base, grid=grid, seed_mode="independent")
    seeds = [t.config.model.seed for t in indep]
    assert len(set(seeds)) == 4  # no two widths share a draw
    assert sorted(t.replicate for t in indep) == [0, 0, 1, 1]
    assert {t.seed_mode for t in indep} == {"independent"}
    _, again = _sweep(tmp_path, base=base, grid=grid, seed_mode="independent")
    assert [t.config.model.seed for t in again] == seeds  # derived, so reproducible


def test_mean_ci_and_slopes_from_replicates():
    mu, half, n = mean_ci([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653 (tables); sd = 1
    assert (mu, n) == (2.0, 3) and half == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    assert mean_ci([5.0])[1] is None and mean_ci([])[0] is None
    # Three replicates with exponents -0.4, -0.5, -0.6 over four widths (offsets differ).
    m = np.array([64, 256, 1024, 4096] * 3, float)
    rep = np.repeat([0, 1, 2], 4)
    y = np.array([c * v ** e for v, c, e in zip(m, np.repeat([1, 3, 7], 4),
                                                np.repeat([-0.4, -0.5, -0.6], 4))])
    slopes = replicate_slopes(pd.Series(m), pd.Series(y), pd.Series(rep))
    np.testing.assert_allclose(sorted(slopes), [-0.6, -0.5, -0.4], atol=1e-12)
    mu, half, n = slope_ci(pd.Series(m), pd.Series(y), pd.Series(rep))
    assert mu == pytest.approx(-0.5) and n == 3 and half == pytest.approx(4.302653 * 0.1 / 3**0.5,
                                                                          rel=1e-6)
    # Points at round-off are left out of a fit above the floor: no power law there.
    y0 = y.copy()
    y0[3::4] = 1e-17
    series = pd.Series(m), pd.Series(y0), pd.Series(rep)
    assert slope_ci(*series, 1e-10)[0] == pytest.approx(-0.5, abs=1e-12)
    assert slope_ci(*series)[0] < -1  # round-off points pull a fit without the floor

def test_singular_flags_round_off_lambda_min_only():
    df = pd.DataFrame({"lambda_min_0": [1e-3, 1e-12, -1e-14, None],
                       "lambda_max_0": [10.0, 10.0, 10.0, None]})
    assert singular(df).tolist() == [False, True, True, False]
