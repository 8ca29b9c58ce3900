"""Benchmark: the Gram on a grid of actors, 1 actor against the 2 x 1 width split and the 1 x 2
row split, one thread per actor, side by side in one run (issue 15).

    python tools/bench_grid.py [--repeats 3]

Two float64 nets, sketch_in (trained U, a fixed Gaussian sketch V of rank k), each computed by
real `fntk gram` jobs (run_gram_job on one embedded Ray cluster, dist.grid set), the layouts
interleaved, --repeats times:
  thin: n = 4096 points, m = 1024 neurons, k = 32, tiles of 1024 rows (10 tiles);
  wide: n = 1024 points, m = 16384 neurons, k = 32, one tile of 1024 rows.
It prints each layout's tile seconds (the job's `seconds`: tile work, actors already up), median
[min-max], beside the grid plan's prediction (CPU_RATES), the speedup of the better 2-actor
shape over 1 actor (target >= 1.8x), measured and predicted, and whether
fntk_dist.gram.grid_plan.choose_grid picks the shape that measured faster; then, per layout,
where a tile's seconds went (the jobs' tile_phase_seconds per tile, medians over the repeats):
the root's own partial, its wait for the other shards' sum, the finish, the tile file, and
the driver's commit. Run it when the machine is otherwise idle: it prints the load average
before and after.

--wide-tiles 512 256 adds the wide net cut into smaller tiles (3 and 10 tiles), in the same
rounds: whether splitting its one tile lets 2 actors overlap the root's serial tail with the
next tile's work, and what the smaller tiles cost; it ends with the best 2-actor time over the
best 1-actor time across the wide net's tile sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cpu_calibration import job_config, run_job  # noqa: E402
from timing import spread  # noqa: E402

from fntk_dist.distributed.cluster import connect  # noqa: E402
from fntk_dist.gram.grid_plan import CPU_RATES, choose_grid, predict, tile_costs  # noqa: E402

CASES = {  # name: (n, m, tile)
    "thin": (4096, 1024, 1024),
    "wide": (1024, 16384, 1024),
}
LAYOUTS = {"1 actor": (1, 1), "2x1 width split": (2, 1), "1x2 row split": (1, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--wide-tiles", type=int, nargs="*", default=[],
                    help="more tile sizes (rows) for the wide net, beside its one tile of 1024")
    args = ap.parse_args()
    cases = dict(CASES)
    n_wide, m_wide, _ = CASES["wide"]
    for tile in args.wide_tiles:
        if not 0 < tile < n_wide:
            raise SystemExit(f"--wide-tiles: {tile} is not between 1 and {n_wide - 1} rows")
        cases[f"wide, tile {tile}"] = (n_wide, m_wide, tile)
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    connect(None, min_cpus=2)
    model = {"mode": "sketch_in", "k": args.k, "sketch": "gaussian"}
    seconds = {(case, name): [] for case in cases for name in LAYOUTS}
    phases = {(case, name): [] for case in cases for name in LAYOUTS}
    for _ in range(args.repeats):  # every layout of every case once per round: side by side
        for case, (n, m, tile) in cases.items():
            for name, grid in LAYOUTS.items():
                cfg = job_config({**model, "m": m}, n, args.d, tile, grid[0] * grid[1], grid)
                took, ran, went = run_job(cfg)
                if ran is not None and ran != grid:
                    raise SystemExit(f"{case} {name}: the job ran a {ran} grid, not {grid}")
                seconds[case, name].append(took)
                phases[case, name].append(went)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for case, (n, m, tile) in cases.items():
        print(f"\n{case}: n={n} m={m} k={args.k} d={args.d} tile={tile}, sketch_in, float64, "
              f"{args.repeats} repeats")
        cfg = job_config({**model, "m": m}, n, args.d, tile, 2)
        costs = tile_costs(cfg.model, args.d, n, tile)
        predicted = {name: predict(costs, m, *grid, CPU_RATES).total_s
                     for name, grid in LAYOUTS.items()}
        for name in LAYOUTS:
            print(f"  {name:>16}: {spread(seconds[case, name])} s; predicted "
                  f"{predicted[name]:.4f} s")
        med = {name: statistics.median(seconds[case, name]) for name in LAYOUTS}
        faster = min(("2x1 width split", "1x2 row split"), key=med.get)
        chosen = choose_grid(cfg, n, args.d, tile, 2)
        chosen_name = next(name for name, grid in LAYOUTS.items() if grid == chosen)
        print(f"  speedup of the {faster} over 1 actor: {med['1 actor'] / med[faster]:.2f}x "
              f"(target >= 1.8x); predicted {predicted['1 actor'] / predicted[faster]:.2f}x")
        print(f"  choose_grid: {chosen[0]}x{chosen[1]} ({chosen_name}); measured faster: "
              f"{faster}: {'agrees' if chosen_name == faster else 'DISAGREES'}")
        print("  per tile, ms (medians): root's partial, wait for the others, finish, file; "
              "driver's commit")
        for name in LAYOUTS:
            went = phases[case, name]
            print(f"  {name:>16}: " + "  ".join(
                f"{phase} {1e3 * statistics.median(w[phase] for w in went):.1f}"
                for phase in went[0]))
    if args.wide_tiles:
        wide = [case for case in cases if case.startswith("wide")]
        med = {(case, name): statistics.median(seconds[case, name])
               for case in wide for name in LAYOUTS}
        one = min((med[case, "1 actor"], case) for case in wide)
        two = min((med[case, name], case, name) for case in wide for name in LAYOUTS
                  if name != "1 actor")
        print(f"\nwide, best over its tile sizes: 1 actor {one[0]:.4f} s ({one[1]}); 2 actors "
              f"{two[0]:.4f} s ({two[1]}, {two[2]}): {one[0] / two[0]:.2f}x")


if __name__ == "__main__":
    main()
