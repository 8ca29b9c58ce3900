"""Benchmark: the closed-form Gram against torch.func Jacobians and against its bare GEMMs.

    python tools/bench_gram.py [--n 512 --m 2048 --d 128 --repeats 5]

For float64 and float32 it times, in one run on the same inputs:
  empirical_ntk   the closed form (dense net, W trained)
  autograd_ntk    the Jacobian contraction J J^T (torch.func)
  bare GEMMs      P = X W^T in the net's dtype and S S^T in float32, what the closed form needs
  bare GEMMs f64  the same two products done in float64
and prints the ratios the targets are stated in (autograd / closed form >= 50; closed form /
bare GEMMs <= 1.3; for float64, closed form faster than the float64 GEMMs).
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of

from fntk_dist import TwoLayerNet, autograd_ntk, empirical_ntk


def run(dtype: torch.dtype, n: int, m: int, d: int, repeats: int) -> None:
    x = torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(0))
    net = TwoLayerNet(d, m, "dense", dtype=dtype, seed=0)
    w = net.W.detach()
    x64, w64 = x.double(), w.double()

    def bare():
        s = (x @ w.T > 0).to(torch.float32)
        return s @ s.T

    def bare64():
        s = (x64 @ w64.T > 0).to(torch.float64)
        return s @ s.T

    t_closed = best_of(lambda: empirical_ntk(net, x), repeats)
    t_auto = best_of(lambda: autograd_ntk(net, x), 1)
    t_bare = best_of(bare, repeats)
    t_bare64 = best_of(bare64, repeats)
    flops = 2 * n * d * m + 2 * n * n * m + 2 * n * n * d
    name = str(dtype).removeprefix("torch.")
    print(f"{name:8} {t_closed:9.4f} {t_auto:9.3f} {t_bare:9.4f} {t_bare64:9.4f} "
          f"{t_auto / t_closed:11.0f}x {t_closed / t_bare:11.2f}x {t_closed / t_bare64:13.2f}x "
          f"{flops / t_closed / 1e9:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n, m, d = args.n, args.m, args.d
    print(f"n={n} m={m} d={d}  torch {torch.__version__}  threads={torch.get_num_threads()}")
    print(f"{'dtype':8} {'closed':>9} {'autograd':>9} {'bare':>9} {'bare f64':>9} "
          f"{'auto/closed':>12} {'closed/bare':>12} {'closed/bare64':>14} {'GFLOP/s':>8}")
    for dtype in (torch.float64, torch.float32):
        run(dtype, n, m, d, args.repeats)
    print("seconds are the best of --repeats runs (autograd: one run after a warm-up)")


if __name__ == "__main__":
    main()
