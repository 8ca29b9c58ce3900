"""The depth-1 network against golden_depth1.npz.

The arrays were written by tests/assets/make_golden_depth1.py from the two-layer code before the
layer refactor: weights, outputs, blocked output and gradients, Gram, cross-Gram and mat-vec for
every mode and sketch. The weights are pure functions of the seed and must be equal bit for bit.
What the net computes from them agrees to rounding: a GEMM's last bits depend on the CPU's
kernels, and an AVX-512 host differs from the host that wrote the file by up to 4.2 units in
the last place of each array's largest entry (forward, blocked output, gradients, Gram,
cross-Gram, mat-vec; measured over every case). The bound is 64 units: a wrong term, a lost
scale or a transposed factor moves an entry by far more.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from fntk_dist import TwoLayerNet, empirical_ntk, ntk_matvec
from fntk_dist.train.blocked import blocked_output

ASSETS = Path(__file__).parents[1] / "assets"
_spec = importlib.util.spec_from_file_location("make_golden", ASSETS / "make_golden_depth1.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

# Where each tensor of the two-layer layout lives in the layer stack: old state_dict / parameter
# name -> new (the first layer is layers.0, the readout stays a).
_MOVED = {
    "a": "a",
    "W": "layers.0.W",
    "U": "layers.0.U",
    "V": "layers.0.V",
    "in_sketch.matrix": "layers.0.in_sketch.matrix",
    "in_sketch.signs": "layers.0.in_sketch.signs",
    "in_sketch.rows": "layers.0.in_sketch.rows",
    "in_sketch.bucket": "layers.0.in_sketch.bucket",
    "out_sketch.matrix": "layers.0.out_sketch.matrix",
    "out_sketch.signs": "layers.0.out_sketch.signs",
    "out_sketch.bucket": "layers.0.out_sketch.bucket",
}


@pytest.fixture(scope="module")
def stored() -> dict[str, np.ndarray]:
    with np.load(ASSETS / "golden_depth1.npz") as z:
        return {k: z[k] for k in z.files}


def _equal(got: torch.Tensor | np.ndarray, want: np.ndarray, what: str) -> None:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert np.array_equal(got, want), f"{what}: max diff {np.abs(got - want).max()}"


def _close(got: torch.Tensor, want: np.ndarray, what: str) -> None:
    """Equal to rounding: within 64 units in the last place of the tensor's largest entry."""
    got = got.detach().cpu().numpy()
    assert got.dtype == want.dtype and got.shape == want.shape, what
    bound = 64 * np.finfo(want.dtype).eps * np.abs(want).max()
    assert np.abs(got - want).max() <= bound, f"{what}: max diff {np.abs(got - want).max()}"


def _group(stored: dict[str, np.ndarray], case: str, prefix: str) -> dict[str, np.ndarray]:
    """The case's stored arrays named prefix.<old name>, keyed by their new names."""
    head = f"{case}/{prefix}."
    return {_MOVED[k[len(head):]]: v for k, v in stored.items() if k.startswith(head)}


@pytest.mark.parametrize("case", golden.CASES, ids=[c[0] for c in golden.CASES])
def test_depth1_net_matches_golden(stored, case):
    name, mode, sketch, train_output, dtype, neurons = case
    net = TwoLayerNet(d=golden.D, m=golden.M, mode=mode, k=None if mode == "dense" else golden.K,
                      sketch=sketch, train_output=train_output, seed=3, dtype=dtype,
                      neurons=neurons)
    x, x2 = golden.inputs(net.dtype)

    state = net.state_dict()
    want_state = _group(stored, name, "state")
    assert set(state) == set(want_state)
    for key, want in want_state.items():
        _equal(state[key], want, f"{name} state {key}")

    with torch.no_grad():
        _close(net(x), stored[f"{name}/forward"], f"{name} forward")
    y = blocked_output(net, x, block=64)
    _close(y, stored[f"{name}/blocked"], f"{name} blocked")
    (0.5 * (y**2).sum()).backward()
    grads = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    want_grads = _group(stored, name, "grad")
    assert set(grads) == set(want_grads)
    for key, want in want_grads.items():
        _close(grads[key], want, f"{name} grad {key}")

    if neurons is None:
        _close(empirical_ntk(net, x, block=64), stored[f"{name}/gram"], f"{name} gram")
        _close(empirical_ntk(net, x, x2, block=64), stored[f"{name}/cross"], f"{name} cross")
        v = torch.linspace(-1, 1, golden.N, dtype=net.dtype)
        _close(ntk_matvec(net, x, v, block=64), stored[f"{name}/matvec"], f"{name} matvec")
    else:
        assert f"{name}/gram" not in stored
