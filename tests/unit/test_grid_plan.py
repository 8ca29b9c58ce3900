"""The grid plan (fntk_dist.gram.grid_plan): its counts against the net's own and against real
partials, its choices on clear cases, and `fntk gram --plan` (prints, runs nothing)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import yaml

from fntk_dist.cli.main import main
from fntk_dist.config import RunConfig
from fntk_dist.gram.executor import span_partial
from fntk_dist.gram.grid_plan import (
    CPU_RATES,
    choose_grid,
    factor_pairs,
    h100_rates,
    kernel_seconds,
    plan,
    predict,
    tile_costs,
)
from fntk_dist.gram.plan_report import plan_rows, tile_sizes
from fntk_dist.models.config import ModelConfig
from fntk_dist.ntk.gram_terms import SYM_SPLIT, symmetric_operand_rows, symmetric_share


def run_config(**model) -> RunConfig:
    return RunConfig.model_validate({"model": {"mode": "sketch_in", "k": 16, **model},
                                     "gram": {"device": "cpu"}})


@pytest.mark.parametrize("model", [
    {"mode": "sketch_in", "m": 96, "k": 8},
    {"mode": "lowrank", "m": 96, "k": 8, "train_output": True},
    {"mode": "dense", "m": 96},
    {"layers": [{"m": 40, "mode": "lowrank", "k": 8}, {"m": 96, "mode": "sketch_out", "k": 8}]},
])
def test_tile_costs_add_up_to_the_nets_count_and_the_real_partials(model):
    """The split into repeated and per-neuron FLOPs sums, over the sweep's tiles (tile not
    dividing n), to Network.gram_flops of every tile; a partial's bytes are those of a real
    GramPartial of the tile's shape."""
    cfg = ModelConfig(**model)
    n, d, tile = 23, 12, 10
    costs = tile_costs(cfg, d, n, tile)
    net = cfg.build(d)
    bounds = [(i, min(i + tile, n)) for i in range(0, n, tile)]
    spans = [(bounds[i], bounds[j]) for i in range(len(bounds)) for j in range(i, len(bounds))]
    assert sum(c.count for c in costs) == len(spans)
    want = sum(net.gram_flops(r1 - r0, c1 - c0) for (r0, r1), (c0, c1) in spans)
    got = sum(c.count * (c.fixed_flops + c.per_neuron_flops * cfg.m) for c in costs)
    assert got == pytest.approx(want, rel=1e-12)
    x = torch.randn(n, d, dtype=torch.float64)
    for span in spans:
        part = span_partial(net, x, span, None)
        stored = [t for term in (*part.terms, *([part.back] if part.back else []))
                  for t in term.tensors()]
        (r0, r1), (c0, c1) = span
        shape = next(c for c in costs
                     if (c.rows, c.cols, c.diagonal) == (r1 - r0, c1 - c0, r0 == c0))
        assert shape.partial_bytes == sum(t.numel() * t.element_size() for t in stored)
        assert shape.tile_bytes == (r1 - r0) * (c1 - c0) * 8  # the store's dtype, the net's
    assert [c.tile_bytes for c in tile_costs(cfg, d, n, tile, "float32")] == [
        c.tile_bytes / 2 for c in costs]


def test_one_tile_is_split_by_width():
    """n = tile: one tile, so row groups beyond the first would idle; the width split wins
    (at m = 4096 the tile is so small that 2x2's shorter tree nearly ties it)."""
    assert choose_grid(run_config(m=16384), 256, 32, 256, 4) == (4, 1)


def test_thin_net_with_many_tiles_is_split_by_rows():
    """m = 64 neurons over 136 tiles: width shards would run thin kernels and move a partial
    per level per tile; row groups each take their tiles whole."""
    assert choose_grid(run_config(m=64), 4096, 32, 256, 4) == (1, 4)


def test_every_shape_of_the_workers_is_planned_and_none_wider_than_m():
    rows = plan_rows(run_config(m=2, k=2), 512, 8, 128, 4)
    assert sorted(r["grid"] for r in rows) == ["1x4", "2x2"]  # 4 shards of 2 neurons: none
    assert [r["chosen"] for r in rows] == [True, False]
    assert rows[0]["total_s"] <= rows[1]["total_s"]
    assert factor_pairs(12, 100) == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]


def test_the_prediction_follows_the_rates():
    """A free link and unlimited cores: W actors on one tile take 1/W of its per-neuron
    work; the driver as the only cost sets the time whatever the grid."""
    cfg = run_config(m=4096)
    costs = tile_costs(cfg.model, 32, 256, 256)
    free = replace(CPU_RATES, link_bytes_s=float("inf"), call_s=0.0, cores=None,
                   finish_s=0.0, finish_flops=float("inf"), half_width=0.0,
                   store_bytes_s=float("inf"), commit_s=0.0, cold_s=0.0, activation_s=0.0,
                   operand_s=0.0)
    one, four = predict(costs, 4096, 1, 1, free), predict(costs, 4096, 4, 1, free)
    c = costs[0]
    # One diagonal tile: on the CPU its rows x cols products are formed from their upper
    # blocks (gram_terms.symmetric_blocks), on a GPU whole.
    assert c.diagonal and 0 < c.count_flops <= c.square_flops < c.per_neuron_flops
    per_neuron = c.per_neuron_flops - (1 - symmetric_share(c.rows)) * c.square_flops
    assert one.compute_s == pytest.approx((c.fixed_flops + per_neuron * 4096)
                                          / free.peak_flops)
    assert four.compute_s == pytest.approx((c.fixed_flops + per_neuron * 1024)
                                           / free.peak_flops)
    gpu = predict(costs, 4096, 1, 1, replace(free, gpu=True))
    assert gpu.compute_s == pytest.approx((c.fixed_flops + c.per_neuron_flops * 4096)
                                          / free.peak_flops)
    assert four.comm_s == 0.0 and four.bytes_per_actor == c.partial_bytes
    slow_driver = replace(free, commit_s=100.0)
    times = [p.total_s for p in plan(cfg.model, 256, 32, 256, 4, slow_driver)]
    assert times == pytest.approx([100.0] * 3, rel=1e-3)


def test_pre_activations_cost_their_passes():
    """kernel_seconds adds activation_s per pre-activation: rows + cols of an off-diagonal
    tile's points per neuron, the rows alone on the diagonal (x2 is x1)."""
    cfg = run_config(m=4096)
    diag, off = tile_costs(cfg.model, 32, 512, 256)
    assert diag.diagonal and not off.diagonal
    assert (diag.activations, off.activations) == (256, 512)
    base = replace(CPU_RATES, activation_s=0.0)
    for c in (diag, off):
        for shard in (64, 4096):
            extra = kernel_seconds(c, shard, replace(base, activation_s=1e-9)) \
                - kernel_seconds(c, shard, base)
            assert extra == pytest.approx(c.activations * shard * 1e-9)


def test_products_cost_the_rows_of_points_they_read():
    """kernel_seconds adds operand_s per row of points each square product reads, per neuron:
    rows + cols of a whole product; on the CPU's diagonal, every symmetric block's rows and
    columns, (SYM_SPLIT + 1) x rows; a GPU forms the diagonal's products whole."""
    cfg = run_config(m=4096)
    diag, off = tile_costs(cfg.model, 32, 512, 256)
    squares = off.square_flops / (2 * 256 * 256)  # the rows x cols products per neuron
    assert squares >= 1
    assert symmetric_operand_rows(256) == (SYM_SPLIT + 1) * 256
    assert symmetric_operand_rows(2 * SYM_SPLIT - 1) == 2 * (2 * SYM_SPLIT - 1)  # whole
    for rates, rows in ((CPU_RATES, {True: (SYM_SPLIT + 1) * 256, False: 512}),
                        (h100_rates(), {True: 512, False: 512})):
        base = replace(rates, operand_s=0.0)
        for c in (diag, off):
            extra = kernel_seconds(c, 1024, replace(base, operand_s=1e-9)) \
                - kernel_seconds(c, 1024, base)
            assert extra == pytest.approx(squares * rows[c.diagonal] * 1024 * 1e-9)


def test_cold_starts_and_shared_cores():
    """Every actor's first tile costs cold_s once; actors beyond the host's cores time-share
    them, and a row group's chain of tiles runs at cores / actors of a core."""
    cfg = run_config(m=4096)
    costs = tile_costs(cfg.model, 32, 1024, 256)  # 10 tiles
    base = replace(CPU_RATES, cores=None, cold_s=0.0, shared_rate=1.0)
    cold = replace(base, cold_s=1.0)
    for width, rows in ((1, 1), (2, 1), (1, 2), (2, 2)):
        warm = predict(costs, 4096, width, rows, base)
        first = predict(costs, 4096, width, rows, cold)
        assert first.total_s == pytest.approx(warm.total_s + 1.0)
        assert first.compute_s == pytest.approx(warm.compute_s + 1.0)
    # Four actors on two cores: each group's path (cold start included) at half a core.
    for rates in (base, cold):
        alone = predict(costs, 4096, 2, 2, rates)
        shared = predict(costs, 4096, 2, 2, replace(rates, cores=2))
        assert shared.total_s == pytest.approx(2 * (alone.compute_s + alone.comm_s))
    # As many cores as actors: no time-sharing, but every actor's kernel at the rate it
    # keeps while the other cores run too (a lone actor at its own).
    assert predict(costs, 4096, 2, 2, replace(cold, cores=4)).total_s == pytest.approx(
        predict(costs, 4096, 2, 2, cold).total_s)
    kernel_only = replace(base, finish_s=0.0, finish_flops=float("inf"),
                          store_bytes_s=float("inf"), call_s=0.0)
    for width, rows, factor in ((2, 2, 2.0), (1, 1, 1.0)):
        apart = predict(costs, 4096, width, rows, replace(kernel_only, cores=4))
        crowded = predict(costs, 4096, width, rows, replace(kernel_only, cores=4,
                                                            shared_rate=0.5))
        assert crowded.compute_s == pytest.approx(factor * apart.compute_s)


def test_tiles_stored_by_the_roots_or_sent_to_the_driver():
    """Roots that reach the store's folder write their tiles, row groups in parallel; roots on
    other nodes send them to the driver, which writes every tile in turn."""
    cfg = run_config(m=64)
    costs = tile_costs(cfg.model, 32, 4096, 256)  # 136 tiles of 0.5 MB
    tiles = sum(c.count for c in costs)
    slow = replace(CPU_RATES, cores=None, store_bytes_s=1e6, flush_bytes_s=float("inf"))
    shared = predict(costs, 64, 1, 4, slow)
    sent = predict(costs, 64, 1, 4, replace(slow, shared_store=False))
    store_all = sum(c.count * c.tile_bytes for c in costs) / slow.store_bytes_s
    assert shared.driver_s == pytest.approx(tiles * slow.commit_s)
    # A commit whose journal's fsync writes the tile to disk first: its bytes too.
    flushed = predict(costs, 64, 1, 4, replace(slow, flush_bytes_s=2e6))
    assert flushed.driver_s == pytest.approx(tiles * slow.commit_s + store_all / 2)
    assert shared.total_s < store_all / 3  # four roots write at once
    assert sent.driver_s > store_all and sent.total_s > store_all


def write(tmp_path, cfg: dict):
    path = tmp_path / "gram.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


GRAM = {"model": {"mode": "sketch_in", "m": 1024, "k": 16, "sketch": "srht"},
        "data": {"source": "sphere", "n": 512, "d": 32}, "tracking": {"wandb": False}}


def test_plan_prints_every_shape_and_runs_nothing(tmp_path):
    """In a fresh interpreter: exit 0, the table, no run folder, Ray never imported."""
    out = tmp_path / "run"
    code = ("import sys; from fntk_dist.cli.main import main; "
            f"rc = main(['gram', {str(write(tmp_path, GRAM))!r}, '--plan', '--workers', '4', "
            f"'--tile', '128', '--out', {str(out)!r}]); "
            "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "n=512 d=32 m=1024 tile=128 (10 tiles) workers=4" in lines[0]
    shapes = [line.split()[0] for line in lines[2:5]]
    assert sorted(shapes) == ["1x4", "2x2", "4x1"]
    assert sum("<- chosen" in line for line in lines) == 1
    assert lines[-1] == "ray imported: False"
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_plan_weighs_smaller_tiles(tmp_path, capsys):
    """--plan also gives the best shape at halvings of the tile: more tiles to share among
    the row groups, each with its own fixed costs; it names a smaller tile only where that
    is predicted faster."""
    cfg = run_config(m=4096)
    sizes = tile_sizes(cfg, 4096, 32, 4096, 16)  # one tile for 16 workers
    assert [(s["tile"], s["tiles"]) for s in sizes] == [(4096, 1), (2048, 3), (1024, 10),
                                                        (512, 36)]
    for s in sizes:
        best = plan(cfg.model, 4096, 32, s["tile"], 16, CPU_RATES)[0]
        assert (s["grid"], s["total_s"]) == (f"{best.width}x{best.rows}", best.total_s)
    assert min(sizes, key=lambda s: s["total_s"])["tile"] < 4096  # idle groups cost more
    assert [s["tile"] for s in tile_sizes(cfg, 4096, 32, 40, 16)] == [40, 20]  # >= 16 rows
    assert main(["gram", str(write(tmp_path, GRAM)), "--plan", "--workers", "4",
                 "--tile", "512"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = out[out.index("smaller tiles (gram.tile: tiles, best grid, total_s):") + 1:]
    assert [line.split(":")[0].strip() for line in listed[:4]] == ["512", "256", "128", "64"]
    assert listed[0].endswith("<- this tile") and "1 tiles" in listed[0]
    faster = [line for line in out if "is predicted" in line]
    assert len(faster) == 1 and faster[0].endswith("faster than gram.tile=512")


def test_plan_marks_the_configured_grid(tmp_path, capsys):
    assert main(["gram", str(write(tmp_path, GRAM)), "--plan", "--workers", "4",
                 "dist.grid=[2, 2]"]) == 0
    assert "2x2" in next(line for line in capsys.readouterr().out.splitlines()
                         if "<- dist.grid" in line)


@pytest.mark.parametrize("overrides, needle", [
    (["gram.tile=4096"], "gram.tile"),
    (["--workers", "4", "dist.grid=[3, 1]"], "dist.grid"),
    (["model.k=0"], "model.k"),
])
def test_plan_bad_input_is_one_line_and_exit_2(tmp_path, capsys, overrides, needle):
    assert main(["gram", str(write(tmp_path, GRAM)), "--plan", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fntk: error:") and needle in err and "\n" not in err
