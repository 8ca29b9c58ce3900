"""tools/cpu_calibration.fit_kernel: the scaling model's kernel fit recovers the rates that
made its samples, and follows them when they change."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from cpu_calibration import fit_kernel  # noqa: E402

from fntk_dist.gram.grid_plan import CPU_RATES, kernel_seconds, tile_costs  # noqa: E402
from fntk_dist.models.config import ModelConfig  # noqa: E402


def samples(peak: float, half: float, act_s: float) -> list:
    """What calibrate_kernel measures, made by the plan's own kernel_seconds."""
    rates = replace(CPU_RATES, peak_flops=peak, half_width=half, activation_s=act_s,
                    call_s=0.0, count_flops=None)
    model = ModelConfig(mode="sketch_in", m=1024, k=32)
    out = []
    for w, t in [(w, 512) for w in (32, 128, 512, 2048, 8192)] + [(8192, 256), (8192, 1024)]:
        c = next(c for c in tile_costs(model, 256, 2 * t, t) if not c.diagonal)
        out.append((c, w, kernel_seconds(c, w, rates)))
    return out


@pytest.mark.parametrize("peak, half, act_s", [
    (300e9, 4 * 1.25 ** 20, 3e-9),  # a half-rate width on the fit's grid
    (90e9, 4 * 1.25 ** 10, 0.0),  # products alone
    (150e9, 0.0, 1e-8),
])
def test_the_fit_recovers_the_rates_of_its_samples(peak, half, act_s):
    got = fit_kernel(samples(peak, half, act_s))
    assert got[0] == pytest.approx(peak, rel=1e-6)
    assert got[1] == pytest.approx(half, rel=1e-9)
    assert got[2] == pytest.approx(act_s, rel=1e-6, abs=1e-15)
