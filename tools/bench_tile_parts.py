"""Benchmark: one Gram tile's parts on the CPU, by mode, one thread: the partial (the sums
over neuron blocks, default block), the finish (the tile from the summed partial) and the
finish with the tile file (finish_span staging it beside a store's folder, as a root does).

    python tools/bench_tile_parts.py [--n 1024 --m 16384 --d 256 --repeats 7]
    python tools/bench_tile_parts.py --against REV [--rounds 3]

For sketch_in, dense, lowrank and sketch_out (float64, k = 32) and two tiles (diagonal: n
points against themselves; off-diagonal: n points against n others) it prints the seconds of
span_partial's first call in the process, then the median [min-max] of --repeats more, of
finish_gram and of finish_span into a temporary folder, with the block default_block chose.
--against REV measures REV's fntk_dist (in a temporary git worktree) and the working tree's
alternately, --rounds times each, every time in a fresh process (a first call is a fresh
process's), and prints the median of the rounds for both side by side.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import spread, wall_times

ROOT = Path(__file__).resolve().parents[1]
MODES = {"sketch_in": {"k": 32, "sketch": "gaussian"}, "dense": {}, "lowrank": {"k": 32},
         "sketch_out": {"k": 32, "sketch": "gaussian"}}


def measure(args: argparse.Namespace) -> list[dict]:
    """Every (mode, tile) of this process's fntk_dist, as one record each."""
    import torch

    from fntk_dist.gram.executor import finish_span, span_partial
    from fntk_dist.gram.tile_file import TileTarget, warm_up
    from fntk_dist.memory import keep_freed_memory
    from fntk_dist.models.blocks import default_block
    from fntk_dist.models.config import ModelConfig
    from fntk_dist.ntk.empirical import finish_gram

    torch.set_num_threads(1)
    keep_freed_memory()  # as a Gram actor runs
    warm_up()
    n = args.n
    x = torch.randn(2 * n, args.d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x /= x.norm(dim=1, keepdim=True)
    out = []
    for mode, extra in MODES.items():
        net = ModelConfig(mode=mode, m=args.m, dtype="float64", **extra).build(args.d)
        for tile, span in (("diagonal", ((0, n), (0, n))), ("off-diagonal", ((0, n), (n, 2 * n)))):
            x1, x2 = x[:n], (None if tile == "diagonal" else x[n:])
            times = []
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                part = span_partial(net, x, span, None, cpu=False)
                times.append(time.perf_counter() - start)
            finish = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                finish_gram(net, part, x1, x2)
                finish.append(time.perf_counter() - start)
            # Each call stages a file of its own beside the target; the folder takes them all.
            with tempfile.TemporaryDirectory() as tmp:
                target = TileTarget(str(Path(tmp) / "t_0_1.arrow"), (n, n), "float64")
                stage = functools.partial(finish_span, net, x, part, span, target)
                filed = wall_times(stage, args.repeats)
            out.append({"mode": mode, "tile": tile, "block": default_block(net, 2 * n),
                        "first": times[0], "partial": times[1:], "finish": finish,
                        "filed": filed})
    return out


def child(tree: Path, args: argparse.Namespace) -> list[dict]:
    """measure() in a fresh process importing the fntk_dist of `tree`."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT / 'tools'}"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--json", "--n", str(args.n),
           "--m", str(args.m), "--d", str(args.d), "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_tile_parts: the run on {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(name: str, records: list[dict]) -> None:
    print(f"\n{name}")
    print(f"  {'mode':>10} {'tile':>12} {'block':>6} {'first s':>8}  {'partial s':>24}  "
          f"{'finish ms':>22}  {'finish + file ms':>22}")
    for r in records:
        finish = spread([1e3 * t for t in r["finish"]], "{:.2f}")
        filed = spread([1e3 * t for t in r["filed"]], "{:.2f}")
        print(f"  {r['mode']:>10} {r['tile']:>12} {r['block']:>6} {r['first']:>8.4f}  "
              f"{spread(r['partial']):>24}  {finish:>22}  {filed:>22}")


def against(rev: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), rev],
                       check=True, capture_output=True)
        try:
            runs: dict[str, list[list[dict]]] = {rev: [], "working tree": []}
            for _ in range(args.rounds):  # alternately, each in a fresh process
                runs[rev].append(child(base, args))
                runs["working tree"].append(child(ROOT, args))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                           check=False, capture_output=True)
    for name, rounds in runs.items():
        # Each figure: the median over rounds of that round's median (first: of the first calls).
        merged = []
        for i, r in enumerate(rounds[0]):
            merged.append({**r, "first": statistics.median(x[i]["first"] for x in rounds),
                           "partial": [statistics.median(x[i]["partial"]) for x in rounds],
                           "finish": [statistics.median(x[i]["finish"]) for x in rounds],
                           "filed": [statistics.median(x[i]["filed"]) for x in rounds]})
        show(f"{name} ({args.rounds} fresh processes; partial, finish, finish + file: median "
             f"[min-max] of the rounds' medians)", merged)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--against", metavar="REV", help="an earlier revision, side by side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child's output
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure(args)))
    elif args.against:
        print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
        against(args.against, args)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    else:
        show(f"n={args.n} m={args.m} d={args.d}, float64, one thread", measure(args))


if __name__ == "__main__":
    main()
