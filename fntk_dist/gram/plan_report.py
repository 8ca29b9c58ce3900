"""`fntk gram --plan`: the grid plan's table for a config, and the same plan at smaller tiles.

The tile size is the user's (gram.tile); the plan weighs it too. Fewer rows per tile make more
tiles for the row groups to share (a sweep of T tiles keeps at most T groups busy), but every
tile costs its own call, finish, file and commit, and a kernel on fewer rows runs slower.
Arithmetic only, like grid_plan: no Ray, nothing written.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .grid_plan import plan, rates_for, tile_shapes

if TYPE_CHECKING:
    from ..config import RunConfig

# The tiles --plan compares: the configured one and up to this many halvings of it, none
# below MIN_PLAN_TILE rows.
TILE_HALVINGS = 3
MIN_PLAN_TILE = 16


def plan_rows(cfg: RunConfig, n: int, d: int, tile: int, workers: int) -> list[dict]:
    """The plan table: one row per shape, fastest first, the chosen one marked."""
    rates = rates_for(cfg)
    shapes = plan(cfg.model, n, d, tile, workers, rates, cfg.gram.block, cfg.gram.dtype)
    return [{"grid": f"{p.width}x{p.rows}", "chosen": i == 0, "rates": rates.name,
             "compute_s": p.compute_s, "comm_s": p.comm_s, "driver_s": p.driver_s,
             "bytes_per_actor": p.bytes_per_actor, "total_s": p.total_s,
             "efficiency": p.efficiency} for i, p in enumerate(shapes)]


def tile_count(n: int, tile: int) -> int:
    """Tiles of the upper triangle of an n x n Gram in tiles of `tile` rows."""
    return sum(shape[0] for shape in tile_shapes(n, tile))


def tile_sizes(cfg: RunConfig, n: int, d: int, tile: int, workers: int) -> list[dict]:
    """The best shape at `tile` rows and at each of its halvings (TILE_HALVINGS, at least
    MIN_PLAN_TILE rows), largest tile first: its tiles, grid and predicted seconds."""
    rates = rates_for(cfg)
    tiles = [tile >> k for k in range(TILE_HALVINGS + 1)
             if k == 0 or tile >> k >= MIN_PLAN_TILE]
    out = []
    for t in tiles:
        best = plan(cfg.model, n, d, t, workers, rates, cfg.gram.block, cfg.gram.dtype)[0]
        out.append({"tile": t, "tiles": tile_count(n, t), "grid": f"{best.width}x{best.rows}",
                    "total_s": best.total_s})
    return out


def plan_report(cfg: RunConfig) -> str:
    """`fntk gram --plan`: the plan table for cfg's data, tile and workers, then the best
    shape at smaller tiles, as text. Reads the data (for n and d) and checks the config as
    the job would; starts and writes nothing. Workers: dist.workers, else dist.grid's W * R,
    else this host's cores (what an embedded Ray cluster offers), since one process has no
    grid to plan."""
    from ..checks import check_gram
    from ..data import load_dataset

    data = load_dataset(cfg.data)
    grid = cfg.dist.grid
    workers = cfg.dist.workers or (grid[0] * grid[1] if grid else os.cpu_count() or 1)
    cfg = cfg.model_copy(update={"dist": cfg.dist.model_copy(update={"workers": workers})})
    layout = check_gram(cfg, data.n, data.d)
    rows = plan_rows(cfg, data.n, data.d, layout.tile, layout.workers)
    lines = [f"grid plan: n={data.n} d={data.d} m={cfg.model.m} tile={layout.tile} "
             f"({tile_count(data.n, layout.tile)} tiles) workers={layout.workers} "
             f"rates={rows[0]['rates']}",
             f"{'grid':>7} {'compute_s':>10} {'comm_s':>9} {'driver_s':>9} "
             f"{'MB/actor':>10} {'total_s':>9} {'efficiency':>10}"]
    for r in rows:
        mark = " <- chosen" if r["chosen"] else ""
        if grid is not None and r["grid"] == f"{grid[0]}x{grid[1]}":
            mark += " <- dist.grid"
        lines.append(f"{r['grid']:>7} {r['compute_s']:10.4g} {r['comm_s']:9.3g} "
                     f"{r['driver_s']:9.3g} {r['bytes_per_actor'] / 1e6:10.4g} "
                     f"{r['total_s']:9.4g} {r['efficiency']:10.2f}{mark}")
    sizes = tile_sizes(cfg, data.n, data.d, layout.tile, layout.workers)
    if len(sizes) > 1:
        lines.append("smaller tiles (gram.tile: tiles, best grid, total_s):")
        for s in sizes:
            mark = " <- this tile" if s["tile"] == layout.tile else ""
            lines.append(f"{s['tile']:>7}: {s['tiles']} tiles, {s['grid']}, "
                         f"{s['total_s']:.4g} s{mark}")
        best = min(sizes, key=lambda s: s["total_s"])
        if best["tile"] != layout.tile:
            lines.append(f"gram.tile={best['tile']} is predicted "
                         f"{sizes[0]['total_s'] / best['total_s']:.2f}x faster than "
                         f"gram.tile={layout.tile}")
    return "\n".join(lines)
