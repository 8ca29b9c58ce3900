"""TwoLayerNet: f(x) = (1/sqrt(m)) sum_r a_r relu(<w_r, x>), first layer dense or W = U V."""

from __future__ import annotations

import math

import torch
from torch import nn

from .cost import NetCost, net_cost
from .seeding import normal_rows, sign_rows
from .sketches import SKETCHES, InputSketch, OutputSketch
from .validation import as_dtype, check_inputs

MODES = ("dense", "sketch_in", "sketch_out", "lowrank")
_FIXED = {"sketch_in": "V", "sketch_out": "U"}  # the factor a sketch describes, per mode


class TwoLayerNet(nn.Module):
    """A wide two-layer ReLU network in NTK parameterisation (DESIGN section 2).

    mode: dense (W trained), sketch_in (U trained, V a fixed sketch), sketch_out (V trained, U a
    fixed random factor), lowrank (U and V trained). sketch: the kind of the fixed factor
    (gaussian, rademacher, srht, countsketch). a is +-1, trained only when train_output.

    Every weight is a pure function of (seed, tensor name, neuron block): neurons=(lo, hi) builds
    only those neurons, exactly the rows lo..hi-1 of the whole net, and its forward returns that
    shard's share of the output (still scaled by 1/sqrt(m) of the whole width).
    """

    def __init__(
        self,
        d: int,
        m: int,
        mode: str = "dense",
        k: int | None = None,
        sketch: str | None = None,
        train_output: bool = False,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
        neurons: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        _check_int("d", d)
        _check_int("m", m)
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if mode == "dense":
            if k is not None:
                raise ValueError("k: mode 'dense' has no rank; leave k unset")
        else:
            if k is None:
                raise ValueError(f"k: mode {mode!r} needs a rank k (1 <= k <= m)")
            _check_int("k", k)
            if k > m:
                raise ValueError(f"k: must be <= m={m}, got {k}")
        if mode in _FIXED:
            sketch = "gaussian" if sketch is None else sketch
            if sketch not in SKETCHES:
                raise ValueError(f"sketch: expected one of {SKETCHES}, got {sketch!r}")
        elif sketch is not None:
            raise ValueError(
                f"sketch: mode {mode!r} has no fixed factor to sketch (sketch applies to "
                "sketch_in and sketch_out)"
            )
        lo, hi = (0, m) if neurons is None else neurons
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= m):
            raise ValueError(f"neurons: expected 0 <= lo < hi <= m={m}, got {neurons}")
        dt = as_dtype(dtype)

        self.d, self.m, self.mode, self.k, self.sketch = d, m, mode, k, sketch
        self.train_output, self.seed, self.lo, self.hi = train_output, seed, lo, hi
        self.a = nn.Parameter(sign_rows(seed, "a", lo, hi).to(dt), requires_grad=train_output)
        self.W = self.U = self.V = None
        self.in_sketch = self.out_sketch = None
        if mode == "dense":
            self.W = nn.Parameter(normal_rows(seed, "W", lo, hi, d).to(dt))
        if mode in ("sketch_in", "lowrank"):
            self.U = nn.Parameter(normal_rows(seed, "U", lo, hi, k).to(dt))
        if mode in ("sketch_out", "lowrank"):
            self.V = nn.Parameter(normal_rows(seed, "V", 0, k, d, std=k**-0.5).to(dt))
        if mode == "sketch_in":
            self.in_sketch = InputSketch(sketch, k, d, seed, dt)
        if mode == "sketch_out":
            self.out_sketch = OutputSketch(sketch, k, lo, hi, seed, dt)
        if device is not None:
            self.to(device)

    # -- what the network is -------------------------------------------------------------
    @property
    def m_local(self) -> int:
        """Neurons held here (hi - lo)."""
        return self.hi - self.lo

    @property
    def dtype(self) -> torch.dtype:
        return self.a.dtype

    @property
    def device(self) -> torch.device:
        return self.a.device

    @property
    def trained(self) -> tuple[str, ...]:
        """Names of the trained parameter groups, among W, U, V, a."""
        return tuple(n for n in ("W", "U", "V", "a") if getattr(self, n) is not None
                     and getattr(self, n).requires_grad)

    def cost(self) -> NetCost:
        """Per-point cost of the whole net (all m neurons): parameters and FLOPs."""
        return net_cost(self.mode, self.sketch, self.m, self.d, self.k, self.train_output)

    def extra_repr(self) -> str:
        shard = "" if (self.lo, self.hi) == (0, self.m) else f", neurons=({self.lo}, {self.hi})"
        return (f"d={self.d}, m={self.m}, mode={self.mode!r}, k={self.k}, sketch={self.sketch!r}, "
                f"train_output={self.train_output}, seed={self.seed}{shard}")

    # -- the pieces the closed forms and the blocked step are made of ----------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the trained first-layer rows multiply: X (dense) or Z = X V^T (factorized)."""
        if self.mode == "dense":
            return x
        if self.mode == "sketch_in":
            return self.in_sketch(x)
        return x @ self.V.T

    def preact(
        self, feats: torch.Tensor, i0: int, i1: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pre-activations <w_r, x> of local neurons [i0, i1): (n, i1 - i0).

        out: an optional contiguous (n, i1 - i0) buffer to write into (reused across blocks,
        it spares an allocation per block); fast sketches ignore it.
        """
        if self.mode == "sketch_out":
            return self.out_sketch(feats, i0, i1)
        rows = self.W[i0:i1] if self.mode == "dense" else self.U[i0:i1]
        return torch.mm(feats, rows.T, out=out) if out is not None else feats @ rows.T

    def to_rank(self, y: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """Y U[i0:i1]: (n, i1 - i0) -> (n, k), for factorized modes."""
        if self.mode == "sketch_out":
            return self.out_sketch.transpose(y, i0, i1)
        return y @ self.U[i0:i1]

    def neuron_weights(self, i0: int, i1: int) -> torch.Tensor:
        """First-layer rows w_r of local neurons [i0, i1): (i1 - i0, d)."""
        if self.mode == "dense":
            return self.W[i0:i1]
        u = self.out_sketch.rows(i0, i1) if self.mode == "sketch_out" else self.U[i0:i1]
        return self.in_sketch.transpose(u) if self.mode == "sketch_in" else u @ self.V

    def analytic_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """Inputs on which the analytic ReLU kernel is this net's infinite-width limit, if any.

        dense: X; sketch_in: the sketched Z = X V^T (U ~ N(0, I_k)); otherwise None.
        """
        if self.mode == "dense":
            return x
        if self.mode == "sketch_in":
            return self.features(x)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(X): (n, d) -> (n,); plain autograd (the reference path; training uses blocks)."""
        check_inputs(x, self.d, "X")
        pre = self.preact(self.features(x), 0, self.m_local)
        return torch.relu(pre) @ self.a / math.sqrt(self.m)


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
