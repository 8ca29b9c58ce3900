"""Benchmark: the closed-form Gram against torch.func Jacobians and against its bare GEMMs.

    python tools/bench_gram.py [--n 512 --m 2048 --d 128 --repeats 5]

For float64 and float32 it times, in one run on the same inputs:
  empirical_ntk   the closed form (dense net, W trained)
  autograd_ntk    the Jacobian contraction J J^T (torch.func)
  bare GEMMs      P = X W^T in the net's dtype and S S^T in float32, what the closed form needs
  bare GEMMs f64  the same two products done in float64
and prints the ratios the targets are stated in (autograd / closed form >= 50; closed form /
bare GEMMs <= 1.3; for float64, closed form faster than the float64 GEMMs).

    python tools/bench_gram.py --deep [--n 512 --m 1024 --d 128 --depth 3 --repeats 3]

The deep case: `depth` dense hidden layers of width m, every layer and the readout trained,
float64. It times the closed form (median and range of --repeats runs), the bare GEMMs it needs
(the forward and backward products and the two n x n products per trained layer, on the same
shapes), and one torch.func Jacobian contraction (rows in chunks of 128: J is n x P, 9 GB at
the default sizes). Targets: autograd / closed form >= 50, closed form / bare GEMMs <= 1.5.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timing import best_of

from fntk_dist import TwoLayerNet, autograd_ntk, empirical_ntk
from fntk_dist.models import LayerSpec, build_network


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


def _times(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run_deep(n: int, m: int, d: int, depth: int, repeats: int) -> None:
    dt = torch.float64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, dtype=dt, generator=g)
    net = build_network(d, [LayerSpec(m)] * depth, train_output=True, dtype=dt, seed=0)
    ws = [layer.W.detach() for layer in net.layers]
    acts = [torch.randn(n, m, dtype=dt, generator=g) for _ in range(depth)]  # h^1..h^L

    def bare():
        x @ ws[0].T  # forward
        for h, w in zip(acts, ws[1:]):
            h @ w.T
        for delta, w in zip(acts[1:], ws[1:]):  # backward: Delta^{l+1} W^{l+1}
            delta @ w
        for a_in in (x, *acts[:-1]):  # per layer: Delta Delta^T and A A^T
            a_in @ a_in.T
        for delta in acts:
            delta @ delta.T
        acts[-1] @ acts[-1].T  # the readout's term

    t_closed = _times(lambda: empirical_ntk(net, x), repeats)
    t_bare = _times(bare, repeats)
    t0 = time.perf_counter()
    auto = autograd_ntk(net, x, chunk=128)
    t_auto = time.perf_counter() - t0
    closed = empirical_ntk(net, x)
    err = float((closed - auto).abs().max() / auto.abs().max())
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    med_c, med_b = statistics.median(t_closed), statistics.median(t_bare)
    print(f"deep: depth={depth} n={n} m={m} d={d} float64, every layer and the readout trained, "
          f"P={params:,}  torch {torch.__version__}  threads={torch.get_num_threads()}")
    print(f"  closed form  {med_c:.4f} s [{min(t_closed):.4f}-{max(t_closed):.4f}] "
          f"({repeats} runs)")
    print(f"  bare GEMMs   {med_b:.4f} s [{min(t_bare):.4f}-{max(t_bare):.4f}]")
    print(f"  autograd     {t_auto:.2f} s (one run, chunks of 128 rows)")
    print(f"  autograd / closed form {t_auto / med_c:.0f}x (target >= 50)   "
          f"closed form / bare GEMMs {med_c / med_b:.2f}x (target <= 1.5)   "
          f"max |closed - autograd| / max |H| = {err:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--m", type=int, default=None, help="width (default 2048; deep: 1024)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--deep", action="store_true", help="the deep case (see above)")
    ap.add_argument("--depth", type=int, default=3)
    args = ap.parse_args()
    if args.deep:
        run_deep(args.n, args.m or 1024, args.d, args.depth, max(3, args.repeats))
        return
    n, m, d = args.n, args.m or 2048, args.d
    print(f"n={n} m={m} d={d}  torch {torch.__version__}  threads={torch.get_num_threads()}")
    print(f"{'dtype':8} {'closed':>9} {'autograd':>9} {'bare':>9} {'bare f64':>9} "
          f"{'auto/closed':>12} {'closed/bare':>12} {'closed/bare64':>14} {'GFLOP/s':>8}")
    for dtype in (torch.float64, torch.float32):
        run(dtype, n, m, d, args.repeats)
    print("seconds are the best of --repeats runs (autograd: one run after a warm-up)")


if __name__ == "__main__":
    main()
