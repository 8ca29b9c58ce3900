"""Layer: one linear map d -> m of a network, dense or factorized, over a range of its neurons.

Everything the kernels and the blocked step need of a layer is here, addressed by local neuron
ranges [i0, i1): the features its trained rows multiply, the pre-activations, the adjoint that
maps a per-neuron signal to the rank-k space, and the neurons' effective weight rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import as_dtype
from .cost import NetCost, layer_cost
from .groups import Group, Role
from .seeding import normal_rows, stream
from .sketches import SKETCHES, InputSketch, OutputSketch
from .width import SketchColumns, SumFn, gather_columns, sum_partials

MODES = ("dense", "sketch_in", "sketch_out", "lowrank")
_FIXED = {"sketch_in": "V", "sketch_out": "U"}  # the factor a sketch describes, per mode
_ROLES = {"W": Role.ROWS, "U": Role.ROWS, "V": Role.RANK}


def check_int(name: str, value: object) -> None:
    """value must be an integer >= 1 (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")


def check_layer_args(m: int, mode: str, k: int | None, sketch: str | None) -> str | None:
    """The checks that need no input dimension; returns the sketch kind (gaussian by default
    where the mode has a fixed factor, None otherwise). ValueError('<argument>: ...')."""
    check_int("m", m)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "dense":
        if k is not None:
            raise ValueError("k: mode 'dense' has no rank; leave k unset")
    else:
        if k is None:
            raise ValueError(f"k: mode {mode!r} needs a rank k (1 <= k <= m)")
        check_int("k", k)
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
    return sketch


class Layer(nn.Module):
    """g = W h for h in R^d, neurons [lo, hi) of m, with W dense or W = U V (DESIGN section 2).

    mode: dense (W trained), sketch_in (U trained, V a fixed sketch), sketch_out (V trained, U a
    fixed random factor), lowrank (U and V trained). Every random tensor is a pure function of
    (seed, stream(index, name), neuron block), so the rows lo..hi-1 are exactly those of the
    whole layer, and layer 0 is the first layer of the two-layer net.

    inputs=(lo, hi): a width shard of a deep net holds only those columns of its input (the
    layer below's neurons, DESIGN section 7), and `reduce` sums a tensor over the shards that
    hold the others. A factorized layer then holds the matching columns of V (a fixed sketch
    as that slice of the whole sketch) and sums its partial Z over the shards; a dense layer
    gathers its whole input (take_input) and holds whole rows.
    """

    def __init__(
        self,
        d: int,
        m: int,
        mode: str = "dense",
        k: int | None = None,
        sketch: str | None = None,
        seed: int = 0,
        index: int = 0,
        dtype: torch.dtype | str = torch.float32,
        neurons: tuple[int, int] | None = None,
        inputs: tuple[int, int] | None = None,
        reduce: SumFn | None = None,
    ) -> None:
        super().__init__()
        check_int("d", d)
        sketch = check_layer_args(m, mode, k, sketch)
        lo, hi = _check_range("neurons", neurons, m)
        c0, c1 = _check_range("inputs", inputs, d)
        split = (c0, c1) != (0, d)
        if split and reduce is None:
            raise ValueError("reduce: a layer holding some columns of its input needs the sum "
                             "over the shards holding the others")
        dt = as_dtype(dtype)

        self.d, self.m, self.mode, self.k, self.sketch = d, m, mode, k, sketch
        self.seed, self.index, self.lo, self.hi = seed, index, lo, hi
        self.inputs = (c0, c1)
        # The sum of Z's partials over the input's shards; None: this layer sums nothing (its
        # whole input is here, or, dense, it gathers it whole first).
        self.reduce = reduce if split and mode != "dense" else None
        self._gather = reduce if split and mode == "dense" else None
        self.W = self.U = self.V = None
        self.in_sketch = self.out_sketch = None
        self.factors = {"dense": ("W",), "sketch_in": ("U",), "sketch_out": ("V",),
                        "lowrank": ("U", "V")}[mode]  # the parameters it has
        if mode == "dense":
            self.W = nn.Parameter(normal_rows(seed, stream(index, "W"), lo, hi, d).to(dt))
        if mode in ("sketch_in", "lowrank"):
            self.U = nn.Parameter(normal_rows(seed, stream(index, "U"), lo, hi, k).to(dt))
        if mode in ("sketch_out", "lowrank"):
            v = normal_rows(seed, stream(index, "V"), 0, k, d, std=k**-0.5)
            self.V = nn.Parameter((v[:, c0:c1].contiguous() if split else v).to(dt))
        if mode == "sketch_in":
            self.in_sketch = InputSketch(sketch, k, d, seed, dt, stream(index, "V"))
            if split:
                self.in_sketch = SketchColumns(self.in_sketch, c0, c1)
        if mode == "sketch_out":
            self.out_sketch = OutputSketch(sketch, k, lo, hi, seed, dt, stream(index, "U"))

    # -- what the layer is -----------------------------------------------------------------
    @property
    def m_local(self) -> int:
        """Neurons held here (hi - lo)."""
        return self.hi - self.lo

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self, self.factors[0]).dtype

    @property
    def groups(self) -> tuple[Group, ...]:
        """The trained parameter groups (those with requires_grad), in the order W, U, V."""
        return tuple(Group(self.index, n, _ROLES[n]) for n in self.factors
                     if getattr(self, n).requires_grad)

    def cost(self, recompute: bool = True, input_grad: bool = False) -> NetCost:
        """Per-point cost of the whole layer (all m neurons); see cost.layer_cost."""
        return layer_cost(self.mode, self.sketch, self.m, self.d, self.k, recompute=recompute,
                          input_grad=input_grad)

    def extra_repr(self) -> str:
        shard = "" if (self.lo, self.hi) == (0, self.m) else f", neurons=({self.lo}, {self.hi})"
        if self.inputs != (0, self.d):
            shard += f", inputs={self.inputs}"
        return (f"index={self.index}, d={self.d}, m={self.m}, mode={self.mode!r}, k={self.k}, "
                f"sketch={self.sketch!r}{shard}")

    # -- the pieces the closed forms and the blocked step are made of ----------------------
    def take_input(self, s: torch.Tensor) -> torch.Tensor:
        """The input this layer computes on, from the columns `inputs` of it held here: a dense
        layer of a width shard gathers the whole input (an all-reduce of n x d each way);
        otherwise s itself."""
        if self._gather is None:
            return s
        return gather_columns(s, self.inputs[0], self.d, self._gather)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the trained rows multiply: X (dense) or Z = X V^T (factorized), Z summed over
        the shards of a split input (differentiable: an all-reduce of n x k each way)."""
        if self.mode == "dense":
            return x
        z = self.in_sketch(x) if self.mode == "sketch_in" else x @ self.V.T
        return z if self.reduce is None else sum_partials(z, self.reduce)

    def sum_inputs(self, g: torch.Tensor) -> torch.Tensor:
        """A gradient with respect to Z from this shard's neurons, summed over the shards of a
        split input (in place; g itself otherwise): the blocked step's backward of features."""
        return g if self.reduce is None else self.reduce(g)

    def preact(
        self, feats: torch.Tensor, i0: int, i1: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pre-activations <w_r, x> of local neurons [i0, i1): (n, i1 - i0).

        out: an optional contiguous (n, i1 - i0) buffer to write into (reused across blocks,
        it spares an allocation per block); fast sketches ignore it.
        """
        stored = self.stored_rows
        if stored is None:
            return self.out_sketch(feats, i0, i1)
        rows = stored[i0:i1]
        return torch.mm(feats, rows.T, out=out) if out is not None else feats @ rows.T

    def to_rank(self, y: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """Y U[i0:i1]: (n, i1 - i0) -> (n, k), for factorized modes."""
        if self.mode == "sketch_out":
            return self.out_sketch.transpose(y, i0, i1)
        return y @ self.U[i0:i1]

    @property
    def stored_rows(self) -> torch.Tensor | None:
        """The rows the layer multiplies its features by: W (dense) or U (factorized); None
        for sketch_out, whose fast sketches form its pre-activations."""
        if self.mode == "sketch_out":
            return None
        return self.W if self.mode == "dense" else self.U

    @property
    def feature_dim(self) -> int:
        """Columns of the features: d (dense) or k (factorized)."""
        return self.d if self.mode == "dense" else self.k

    def to_features(self, y: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """Y W[i0:i1] in feature space: (n, i1 - i0) -> (n, feature_dim); the adjoint of
        preact (Y U[i0:i1] for factorized modes)."""
        return y @ self.W[i0:i1] if self.mode == "dense" else self.to_rank(y, i0, i1)

    def features_adjoint(self, f: torch.Tensor) -> torch.Tensor:
        """The adjoint of features: (n, feature_dim) -> (n, d), so that a signal Y on the
        neurons reaches the layer's input as features_adjoint(to_features(Y)) = Y W."""
        if self.mode == "dense":
            return f
        if self.mode == "sketch_in":
            return self.in_sketch.transpose(f)
        return f @ self.V

    def neuron_weights(self, i0: int, i1: int) -> torch.Tensor:
        """Effective rows w_r of local neurons [i0, i1): (i1 - i0, d), over the input columns
        held here."""
        if self.mode == "dense":
            return self.W[i0:i1]
        u = self.out_sketch.rows(i0, i1) if self.mode == "sketch_out" else self.U[i0:i1]
        return self.in_sketch.transpose(u) if self.mode == "sketch_in" else u @ self.V

    def analytic_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """Inputs on which the analytic ReLU kernel is this layer's infinite-width limit, if any.

        dense: X; sketch_in: the sketched Z = X V^T (U ~ N(0, I_k)); otherwise None.
        """
        if self.mode == "dense":
            return x
        if self.mode == "sketch_in":
            return self.features(x)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activations of all local neurons from the input take_input gives."""
        return self.preact(self.features(x), 0, self.m_local)

    def scaled_relu(self, x: torch.Tensor, c: float) -> torch.Tensor:
        """c relu(self(x)) = relu(c self(x)) for c > 0: the layer's activations scaled as the
        layer above takes them. The scale rides in the GEMM (addmm's alpha, free) and the relu
        runs in place on the GEMM's fresh output, which its backward does not keep: two fewer
        passes over the n x m activations and no n x m temporary, each way (a deep step on
        the CPU went from 76 to 58 ms, README "Deep nets on the mesh")."""
        rows = self.stored_rows
        if rows is None:  # a fast sketch: its output may be kept by its backward
            return torch.relu(self(x)) * c
        feats = self.features(x)
        return torch.addmm(feats.new_zeros(()), feats, rows.T, beta=0, alpha=c).relu_()


def _check_range(name: str, rng: tuple[int, int] | None, size: int) -> tuple[int, int]:
    """rng, or (0, size) when None; ValueError('<name>: ...') unless 0 <= lo < hi <= size."""
    lo, hi = (0, size) if rng is None else rng
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo < hi <= size):
        raise ValueError(f"{name}: expected 0 <= lo < hi <= {size}, got {rng}")
    return lo, hi
