"""Benchmark: one training step of a factorized net against the dense net of the same width.

    python tools/bench_step.py [--n 1024 --m 16384 --d 512 --k 32 --repeats 5]

Times, in one run, a full step (blocked forward, blocked backward, SGD update; float32) of
sketch_in (rank k, gaussian V) and of dense, and prints the speedup as a fraction of the FLOP
ratio (m d) / (m k + k d). A plain-autograd step of each is timed too, for reference.
Target: the blocked speedup reaches at least 50% of the FLOP ratio.
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of

from fntk_dist import TwoLayerNet
from fntk_dist.train.blocked import blocked_output


def step_fn(net: TwoLayerNet, x: torch.Tensor, y: torch.Tensor, blocked: bool, block):
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-6)

    def step():
        opt.zero_grad(set_to_none=True)
        out = blocked_output(net, x, block) if blocked else net(x)
        (0.5 * ((out - y) ** 2).sum()).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--m", type=int, default=16384)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--block", type=int, default=None, help="neurons per block (default: auto)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n, m, d, k = args.n, args.m, args.d, args.k
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, generator=g)
    nets = {"dense": TwoLayerNet(d, m, "dense"), "sketch_in": TwoLayerNet(d, m, "sketch_in", k)}
    t = {(name, blocked): best_of(step_fn(net, x, y, blocked, args.block), args.repeats)
         for name, net in nets.items() for blocked in (True, False)}
    ratio = m * d / (m * k + k * d)
    print(f"n={n} m={m} d={d} k={k} float32  torch {torch.__version__}  "
          f"threads={torch.get_num_threads()}")
    for blocked, label in ((True, "blocked step"), (False, "plain autograd step")):
        dense, fact = t[("dense", blocked)], t[("sketch_in", blocked)]
        speedup = dense / fact
        print(f"{label:20} dense {dense:.4f}s  sketch_in {fact:.4f}s  speedup {speedup:.2f}x  "
              f"FLOP ratio {ratio:.2f}  fraction {speedup / ratio:.0%}")


if __name__ == "__main__":
    main()
