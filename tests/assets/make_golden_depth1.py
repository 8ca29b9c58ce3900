"""Writes golden_depth1.npz: weights, outputs, Grams, mat-vecs and blocked gradients of
TwoLayerNet for every mode and sketch, as the two-layer code computed them (made at commit
b12dceb, before the layer refactor). tests/test_golden.py checks the code against them bit for
bit. Regenerate only for an intended change of the network's definition:

    .venv/bin/python tests/assets/make_golden_depth1.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fntk_dist import TwoLayerNet, empirical_ntk, ntk_matvec
from fntk_dist.train.blocked import blocked_output

D, M, K, N = 12, 300, 8, 9  # M crosses a generator block (256 rows)
CASES = [
    # (name, mode, sketch, train_output, dtype, neurons)
    ("dense", "dense", None, False, "float64", None),
    ("dense_a", "dense", None, True, "float64", None),
    ("lowrank", "lowrank", None, False, "float64", None),
    ("lowrank_a", "lowrank", None, True, "float64", None),
    ("dense_f32", "dense", None, True, "float32", None),
    ("sketch_in_srht_f32", "sketch_in", "srht", False, "float32", None),
    ("lowrank_shard", "lowrank", None, True, "float64", (100, 290)),
]
for mode in ("sketch_in", "sketch_out"):
    for sketch in ("gaussian", "rademacher", "srht", "countsketch"):
        CASES.append((f"{mode}_{sketch}", mode, sketch, False, "float64", None))
        CASES.append((f"{mode}_{sketch}_a", mode, sketch, True, "float64", None))
    CASES.append((f"{mode}_srht_shard", mode, "srht", True, "float64", (37, 261)))


def inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, D, generator=g, dtype=torch.float64)
    return x.to(dtype), x2.to(dtype)


def case_arrays(mode, sketch, train_output, dtype, neurons) -> dict[str, np.ndarray]:
    net = TwoLayerNet(d=D, m=M, mode=mode, k=None if mode == "dense" else K, sketch=sketch,
                      train_output=train_output, seed=3, dtype=dtype, neurons=neurons)
    x, x2 = inputs(net.dtype)
    out = {f"state.{k}": v.detach().numpy().copy() for k, v in net.state_dict().items()}
    with torch.no_grad():
        out["forward"] = net(x).numpy()
    y = blocked_output(net, x, block=64)
    out["blocked"] = y.detach().numpy()
    (0.5 * (y**2).sum()).backward()
    for name, p in net.named_parameters():
        if p.grad is not None:
            out[f"grad.{name}"] = p.grad.numpy().copy()
    if neurons is None:
        out["gram"] = empirical_ntk(net, x, block=64).numpy()
        out["cross"] = empirical_ntk(net, x, x2, block=64).numpy()
        v = torch.linspace(-1, 1, N, dtype=net.dtype)
        out["matvec"] = ntk_matvec(net, x, v, block=64).numpy()
    return out


def main() -> None:
    arrays = {}
    for name, *args in CASES:
        for key, val in case_arrays(*args).items():
            arrays[f"{name}/{key}"] = val
    path = Path(__file__).with_name("golden_depth1.npz")
    np.savez_compressed(path, **arrays)
    print(f"{path}: {len(CASES)} cases, {len(arrays)} arrays")


if __name__ == "__main__":
    main()
