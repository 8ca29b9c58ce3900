"""tools/cpu_calibration: the scaling model's kernel fit recovers the rates that made its
samples, and follows them when they change; the model's phases per tile agree with its plan."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from cpu_calibration import fit_kernel  # noqa: E402

from fntk_dist.gram.grid_plan import (  # noqa: E402
    CPU_RATES,
    kernel_seconds,
    phase_seconds,
    predict,
    tile_costs,
)
from fntk_dist.models.config import ModelConfig  # noqa: E402


def samples(peak: float, half: float, act_s: float, operand_s: float) -> list:
    """What calibrate_kernel measures, made by the plan's own kernel_seconds."""
    rates = replace(CPU_RATES, peak_flops=peak, half_width=half, activation_s=act_s,
                    operand_s=operand_s, call_s=0.0, count_flops=None)
    model = ModelConfig(mode="sketch_in", m=1024, k=32)
    cases = [(w, 512, False) for w in (32, 128, 512, 2048, 8192)]
    cases += [(8192, 256, False), (8192, 1024, False)]
    cases += [(8192, t, True) for t in (256, 512, 1024)]
    out = []
    for w, t, diag in cases:
        c = next(c for c in tile_costs(model, 256, 2 * t, t) if c.diagonal == diag)
        out.append((c, w, kernel_seconds(c, w, rates)))
    return out


@pytest.mark.parametrize("peak, half, act_s, operand_s", [
    (300e9, 4 * 1.25 ** 20, 3e-9, 3e-10),  # a half-rate width on the fit's grid
    (90e9, 4 * 1.25 ** 10, 0.0, 0.0),  # products alone
    (150e9, 0.0, 1e-8, 0.0),
    (150e9, 4 * 1.25 ** 5, 0.0, 2e-9),  # operands read, no other pass
])
def test_the_fit_recovers_the_rates_of_its_samples(peak, half, act_s, operand_s):
    got = fit_kernel(samples(peak, half, act_s, operand_s))
    assert got[0] == pytest.approx(peak, rel=1e-6)
    assert got[1] == pytest.approx(half, rel=1e-9)
    assert got[2] == pytest.approx(act_s, rel=1e-6, abs=1e-15)
    assert got[3] == pytest.approx(operand_s, rel=1e-6, abs=1e-15)


def test_without_diagonal_tiles_the_passes_are_not_told_apart():
    """On off-diagonal tiles alone the pre-activations and the operand rows grow alike, so
    only their sum is fitted: why calibrate_kernel times diagonal tiles too."""
    off = [s for s in samples(300e9, 4 * 1.25 ** 20, 3e-9, 3e-10) if not s[0].diagonal]
    _, _, act_s, operand_s = fit_kernel(off)
    c = off[0][0]
    squares = c.square_flops / (2 * c.rows * c.cols)  # the rows x cols products per neuron
    assert act_s + squares * operand_s == pytest.approx(3e-9 + squares * 3e-10, rel=1e-6)


@pytest.mark.parametrize("grid", [(1, 1), (2, 1), (1, 2), (3, 2)])
def test_the_phases_per_tile_add_up_to_the_plans_terms(grid):
    """phase_seconds, which --calibrate sets beside the jobs' timed phases, is the plan's own
    account tile by tile: over a group's share of the sweep its root's phases are the plan's
    compute, its waits the plan's communication, and the commits the driver's seconds."""
    model = ModelConfig(mode="sketch_in", m=4096, k=16)
    costs = tile_costs(model, 32, 1024, 256)  # 10 tiles: 4 diagonal, 6 off it
    rates = replace(CPU_RATES, cores=None)  # an actor per core: no time-sharing
    width, rows = grid
    phases = phase_seconds(costs, model.m, grid, rates)
    p = predict(costs, model.m, width, rows, rates)
    tiles = sum(c.count for c in costs)
    share = math.ceil(tiles / rows)  # the tiles of the busiest group
    root = phases["partial"] + phases["finish"] + phases["stage"]
    # The plan counts one group's cold start; the phases spread every group's over the tiles.
    cold = rates.cold_s * rows / tiles
    assert (root - cold) * share + rates.cold_s == pytest.approx(p.compute_s, rel=1e-12)
    assert phases["wait"] * share == pytest.approx(p.comm_s, rel=1e-12, abs=1e-15)
    assert (phases["wait"] > 0) == (width > 1)
    assert phases["commit"] * tiles == pytest.approx(p.driver_s, rel=1e-12)
