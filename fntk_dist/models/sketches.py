"""Fixed random factors, applied as operators.

InputSketch is the k x d map V of sketch_in (a JL map, E[V^T V] = I_d); OutputSketch holds rows
[lo, hi) of the m x k map U of sketch_out (rows with E[u u^T] = I_k). srht and countsketch are
fast transforms: no dense k x d or m x k matrix is ever built on the compute path.
"""

from __future__ import annotations

import torch
from torch import nn

from .seeding import index_rows, normal_rows, permutation, sign_rows

SKETCHES = ("gaussian", "rademacher", "srht", "countsketch")


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform along the last axis (length a power of two)."""
    shape, n, h = x.shape, x.shape[-1], 1
    while h < n:
        x = x.reshape(*shape[:-1], n // (2 * h), 2, h)
        x = torch.stack((x[..., 0, :] + x[..., 1, :], x[..., 0, :] - x[..., 1, :]), dim=-2)
        h *= 2
    return x.reshape(shape)


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-1] == width else nn.functional.pad(x, (0, width - x.shape[-1]))


class InputSketch(nn.Module):
    """The fixed k x d factor V of sketch_in: Z = X V^T, with E[V^T V] = I_d."""

    def __init__(
        self, kind: str, k: int, d: int, seed: int, dtype: torch.dtype, name: str = "V"
    ) -> None:
        """name: the tensor's stream name (seeding.stream), which its random parts derive from."""
        super().__init__()
        self.kind, self.k, self.d = kind, k, d
        if kind == "gaussian":
            self.register_buffer("matrix", normal_rows(seed, name, 0, k, d, std=k**-0.5).to(dtype))
        elif kind == "rademacher":
            self.register_buffer("matrix", (sign_rows(seed, name, 0, k, d) * k**-0.5).to(dtype))
        elif kind == "srht":
            self.d_pad = next_pow2(d)
            if k > self.d_pad:
                raise ValueError(
                    f"k: srht samples k rows of a {self.d_pad}-point Hadamard transform "
                    f"(d={d} padded to a power of two), so k must be <= {self.d_pad}, got {k}"
                )
            signs = sign_rows(seed, f"{name}.srht_sign", 0, self.d_pad)
            self.register_buffer("signs", signs.to(dtype))
            rows = permutation(seed, f"{name}.srht_rows", self.d_pad)[:k].clone()
            self.register_buffer("rows", rows)
        elif kind == "countsketch":
            self.register_buffer("bucket", index_rows(seed, f"{name}.bucket", 0, d, k))
            self.register_buffer("signs", sign_rows(seed, f"{name}.sign", 0, d).to(dtype))
        else:
            raise ValueError(f"sketch: expected one of {SKETCHES}, got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Z = X V^T: (n, d) -> (n, k).

        The last input's Z is kept and returned again for the same input: full-batch training
        passes its fixed data every step, and every width shard of a deep net would sketch it
        again each time (the srht of 256 points took 2.3 ms of a 2x1 shard's ~50 ms step). Same
        input: x itself or a view of its storage with the same start, shape and strides,
        unchanged since (torch's version counter, which views share), needing no gradient;
        with the sketch's buffers, the autocast state and Z itself unchanged too. A change
        made behind the version counter (through .data or a numpy view) is not seen: such
        inputs must not be written in place between calls."""
        key = self._input_key(x)
        held = self._last
        if key is not None and held is not None and held[0] == key \
                and held[2]._version == held[3]:
            return held[2]
        z = self._sketch(x)
        self._last = None if key is None else (key, x, z, z._version)  # x: keeps its storage
        return z

    _last: tuple | None = None  # (key, input, Z, Z's version) of the last call

    def __getstate__(self) -> dict:
        """A copy (copy.deepcopy of a net) starts without the last call's tensors."""
        state = self.__dict__.copy()
        state.pop("_last", None)
        return state

    def _input_key(self, x: torch.Tensor) -> tuple | None:
        """What identifies a call's input and state; None: not kept (a gradient is needed, or
        torch.func or a compiler is tracing, or a tensor has no storage of its own)."""
        if (x.requires_grad or torch._C._are_functorch_transforms_active()
                or torch.compiler.is_compiling()):
            return None
        dev = x.device.type
        try:
            return (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version,
                    tuple(b.data_ptr() for b in self.buffers()),
                    torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        except RuntimeError:  # a wrapped or fake tensor: nothing to point at
            return None

    def _sketch(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "srht":
            return fwht(_pad(x, self.d_pad) * self.signs)[:, self.rows] * self.k**-0.5
        if self.kind == "countsketch":
            z = x.new_zeros(x.shape[0], self.k)
            return z.index_add(1, self.bucket, x * self.signs)
        return x @ self.matrix.T

    def transpose(self, z: torch.Tensor) -> torch.Tensor:
        """Z V: (n, k) -> (n, d), the adjoint map."""
        if self.kind == "srht":
            full = z.new_zeros(z.shape[0], self.d_pad)
            full[:, self.rows] = z * self.k**-0.5
            return (fwht(full) * self.signs)[:, : self.d]
        if self.kind == "countsketch":
            return z[:, self.bucket] * self.signs
        return z @ self.matrix


class OutputSketch(nn.Module):
    """Rows [lo, hi) of the fixed m x k factor U of sketch_out, rows with E[u u^T] = I_k.

    srht: neurons come in blocks of k' = next_pow2(k); block b is H_{k'}[:, :k] diag(s_b) with
    independent signs s_b, so U z costs O(log k) per neuron. countsketch: u_r = sqrt(k) s_r e_{h_r}.
    Methods take local neuron indices [i0, i1) within [lo, hi).
    """

    def __init__(
        self, kind: str, k: int, lo: int, hi: int, seed: int, dtype: torch.dtype,
        name: str = "U",
    ) -> None:
        """name: the tensor's stream name (seeding.stream), which its random parts derive from."""
        super().__init__()
        self.kind, self.k, self.lo, self.hi = kind, k, lo, hi
        if kind == "gaussian":
            self.register_buffer("matrix", normal_rows(seed, name, lo, hi, k).to(dtype))
        elif kind == "rademacher":
            self.register_buffer("matrix", sign_rows(seed, name, lo, hi, k).to(dtype))
        elif kind == "srht":
            self.k_pad = next_pow2(k)
            self.first_block = lo // self.k_pad
            last_block = (hi - 1) // self.k_pad
            signs = sign_rows(seed, f"{name}.srht_sign", self.first_block, last_block + 1,
                              self.k_pad)
            self.register_buffer("signs", signs.to(dtype))
        elif kind == "countsketch":
            self.register_buffer("bucket", index_rows(seed, f"{name}.bucket", lo, hi, k))
            signs = sign_rows(seed, f"{name}.sign", lo, hi) * k**0.5
            self.register_buffer("signs", signs.to(dtype))
        else:
            raise ValueError(f"sketch: expected one of {SKETCHES}, got {kind!r}")

    def _srht_span(self, i0: int, i1: int) -> tuple[slice, int]:
        """Hadamard blocks covering local neurons [i0, i1) and the offset of i0 in them."""
        g0, g1 = self.lo + i0, self.lo + i1
        b0, b1 = g0 // self.k_pad, (g1 - 1) // self.k_pad
        return slice(b0 - self.first_block, b1 + 1 - self.first_block), g0 - b0 * self.k_pad

    def forward(self, z: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """Z U[i0:i1]^T: (n, k) -> (n, i1 - i0)."""
        if self.kind == "srht":
            blocks, off = self._srht_span(i0, i1)
            t = fwht(_pad(z, self.k_pad)[:, None, :] * self.signs[blocks])
            return t.reshape(z.shape[0], -1)[:, off : off + i1 - i0]
        if self.kind == "countsketch":
            return z[:, self.bucket[i0:i1]] * self.signs[i0:i1]
        return z @ self.matrix[i0:i1].T

    def transpose(self, y: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
        """Y U[i0:i1]: (n, i1 - i0) -> (n, k)."""
        if self.kind == "srht":
            blocks, off = self._srht_span(i0, i1)
            nb = blocks.stop - blocks.start
            full = y.new_zeros(y.shape[0], nb * self.k_pad)
            full[:, off : off + i1 - i0] = y
            t = fwht(full.reshape(y.shape[0], nb, self.k_pad)) * self.signs[blocks]
            return t.sum(dim=1)[:, : self.k]
        if self.kind == "countsketch":
            out = y.new_zeros(y.shape[0], self.k)
            return out.index_add(1, self.bucket[i0:i1], y * self.signs[i0:i1])
        return y @ self.matrix[i0:i1]

    def rows(self, i0: int, i1: int) -> torch.Tensor:
        """U[i0:i1] as a dense (i1 - i0, k) matrix (the neurons' weights, for diagnostics).

        Built from the sketch's own numbers, O((i1 - i0) k): the rows of a dense kind are
        stored, an srht row r is H[j, :k] s_b (j = r's place in its Hadamard block b) and a
        countsketch row is s_r at column h_r.
        """
        if self.kind in ("gaussian", "rademacher"):
            return self.matrix[i0:i1]
        if self.kind == "srht":
            glob = torch.arange(self.lo + i0, self.lo + i1, device=self.signs.device)
            j, col = (glob % self.k_pad)[:, None], torch.arange(self.k, device=glob.device)
            parity = torch.zeros_like(j & col)
            for bit in range(self.k_pad.bit_length() - 1):  # H[j, c] = (-1)^popcount(j & c)
                parity ^= ((j & col) >> bit) & 1
            signs = self.signs[glob // self.k_pad - self.first_block, : self.k]
            return (1 - 2 * parity).to(signs.dtype) * signs
        out = self.signs.new_zeros(i1 - i0, self.k)
        out[torch.arange(i1 - i0, device=out.device), self.bucket[i0:i1]] = self.signs[i0:i1]
        return out
