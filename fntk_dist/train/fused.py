"""The blocked step's last layer in fused Triton kernels, for CUDA under bf16/fp16 autocast.

The walk of train/blocked.py forms each neuron block's n x block pre-activations in device
memory and passes over them six times a step (forward: written by the GEMM, read for the
output; backward: written again, read and written for the masked residual, read by the
gradient's GEMM): on a GPU the step is bound by that traffic, not by its GEMMs. Here the
pre-activations live only in registers, as attention's scores do in FlashAttention:

- forward: out_i = sum_j a_j relu(F_i . R_j), one program per (point tile, neuron range), the
  ranges' partial sums added afterwards in a fixed order (no atomics: the same bits every run);
- backward: one program per neuron tile recomputes S = R_j F_i^T tile by tile over the points
  and accumulates dR_j = a_j sum_i [S_ij > 0] e_i F_i and da_j = sum_i relu(S_ij) e_i;
- the input's gradient, where one is needed (V of lowrank, a deep net's lower layers):
  dF_i = e_i sum_j [S_ij > 0] a_j R_j, one program per (point tile, neuron range) as in the
  forward, the ranges' partial sums added afterwards.

F (n x c) are the layer's features and R (m x c) its rows (W, or U of a factorized layer), both
in the autocast dtype; products accumulate in float32 (the walk rounds each block product to
bf16 first, so this is the more accurate of the two).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch comes without triton: the walk is used
    triton = None

MAX_FEATURES = 256  # a whole feature row stays in registers; wider layers take the walk


def available(feats: torch.Tensor) -> bool:
    """Whether the fused kernels can run on feats: CUDA, triton importable, <= 256 features."""
    return triton is not None and feats.is_cuda and feats.shape[1] <= MAX_FEATURES


def _tiles(c: int) -> tuple[int, int, int, int]:
    """(points per tile, neurons per tile, padded features, warps) for c features."""
    width = max(16, triton.next_power_of_2(c))
    tile = 128 if width <= 128 else 64
    return tile, tile, width, 8


def _dense(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The kernels index rows with stride c: row-major copies of any views."""
    return [t.contiguous() for t in tensors]


def _ranges(n: int, m: int, bi: int, bj: int) -> tuple[int, int]:
    """(neuron ranges, neurons per range) of a kernel with a program per (point tile, range):
    enough programs to fill the device (points alone give n / 128 of them)."""
    ranges = max(1, min(triton.cdiv(m, bj), triton.cdiv(1024, triton.cdiv(n, bi))))
    per_range = triton.cdiv(triton.cdiv(m, ranges), bj) * bj
    return triton.cdiv(m, per_range), per_range


def forward(feats: torch.Tensor, rows: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """sum_j a_j relu(feats_i . rows_j) for every point i, in float32 (a: float32)."""
    feats, rows, a = _dense(feats, rows, a)
    n, c = feats.shape
    m = rows.shape[0]
    bi, bj, bc, warps = _tiles(c)
    ranges, per_range = _ranges(n, m, bi, bj)
    parts = torch.empty(ranges, n, dtype=torch.float32, device=feats.device)
    _forward_kernel[(triton.cdiv(n, bi), ranges)](
        feats, rows, a, parts, n, m, c, per_range, BI=bi, BJ=bj, BC=bc, num_warps=warps,
        num_stages=3)
    return parts.sum(0)


def input_grad(feats: torch.Tensor, rows: torch.Tensor, a: torch.Tensor,
               e: torch.Tensor) -> torch.Tensor:
    """e_i sum_j [feats_i . rows_j > 0] a_j rows_j for every point i: (n, c) float32."""
    feats, rows, a, e = _dense(feats, rows, a, e)
    n, c = feats.shape
    m = rows.shape[0]
    bi, bj, bc, warps = _tiles(c)
    ranges, per_range = _ranges(n, m, bi, bj)
    parts = torch.empty(ranges, n, c, dtype=torch.float32, device=feats.device)
    _input_kernel[(triton.cdiv(n, bi), ranges)](
        feats, rows, a, e, parts, n, m, c, per_range, BI=bi, BJ=bj, BC=bc, num_warps=warps,
        num_stages=3)
    return parts.sum(0)


def backward(feats: torch.Tensor, rows: torch.Tensor, a: torch.Tensor, e: torch.Tensor,
             d_rows: torch.Tensor | None, d_a: torch.Tensor | None) -> None:
    """Writes d_rows[j] = a_j sum_i [feats_i . rows_j > 0] e_i feats_i and
    d_a[j] = sum_i relu(feats_i . rows_j) e_i (each when given; float32, contiguous)."""
    if any(t is not None and not t.is_contiguous() for t in (d_rows, d_a)):
        raise ValueError("d_rows, d_a: the kernel writes them row-major; pass contiguous ones")
    feats, rows, a, e = _dense(feats, rows, a, e)
    n, c = feats.shape
    m = rows.shape[0]
    bi, bj, bc, warps = _tiles(c)
    _backward_kernel[(triton.cdiv(m, bj),)](
        feats, rows, a, e, d_rows if d_rows is not None else a, d_a if d_a is not None else a,
        n, m, c, BI=bi, BJ=bj, BC=bc, WANT_ROWS=d_rows is not None, WANT_A=d_a is not None,
        num_warps=warps, num_stages=3)


if triton is not None:
    @triton.jit
    def _forward_kernel(F, R, A, PARTS, n, m, c, per_range,
                        BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr):
        pi = tl.program_id(0)
        pj = tl.program_id(1)
        ri = pi * BI + tl.arange(0, BI)
        rc = tl.arange(0, BC)
        f = tl.load(F + ri[:, None] * c + rc[None, :],
                    mask=(ri[:, None] < n) & (rc[None, :] < c), other=0.0)
        acc = tl.zeros([BI], dtype=tl.float32)
        lo = pj * per_range
        for j0 in range(0, per_range, BJ):  # the last range may end past m: masked
            rj = lo + j0 + tl.arange(0, BJ)
            ok = rj < m
            r = tl.load(R + rj[:, None] * c + rc[None, :],
                        mask=ok[:, None] & (rc[None, :] < c), other=0.0)
            s = tl.dot(f, tl.trans(r))
            aj = tl.load(A + rj, mask=ok, other=0.0)
            acc += tl.sum(tl.maximum(s, 0.0) * aj[None, :], axis=1)
        tl.store(PARTS + pj * n + ri, acc, mask=ri < n)

    @triton.jit
    def _input_kernel(F, R, A, E, PARTS, n, m, c, per_range,
                      BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr):
        pi = tl.program_id(0)
        pj = tl.program_id(1)
        ri = pi * BI + tl.arange(0, BI)
        rc = tl.arange(0, BC)
        oki = ri < n
        okc = rc < c
        f = tl.load(F + ri[:, None] * c + rc[None, :], mask=oki[:, None] & okc[None, :],
                    other=0.0)
        acc = tl.zeros([BI, BC], dtype=tl.float32)
        lo = pj * per_range
        for j0 in range(0, per_range, BJ):  # the last range may end past m: masked
            rj = lo + j0 + tl.arange(0, BJ)
            ok = rj < m
            r = tl.load(R + rj[:, None] * c + rc[None, :], mask=ok[:, None] & okc[None, :],
                        other=0.0)
            s = tl.dot(f, tl.trans(r))
            aj = tl.load(A + rj, mask=ok, other=0.0)
            p = tl.where(s > 0, aj[None, :], 0.0).to(r.dtype)  # e_i is applied once, below
            acc = tl.dot(p, r, acc)
        e = tl.load(E + ri, mask=oki, other=0.0)
        tl.store(PARTS + pj * n * c + ri[:, None] * c + rc[None, :], acc * e[:, None],
                 mask=oki[:, None] & okc[None, :])

    @triton.jit
    def _backward_kernel(F, R, A, E, DR, DA, n, m, c,
                         BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
                         WANT_ROWS: tl.constexpr, WANT_A: tl.constexpr):
        pj = tl.program_id(0)
        rj = pj * BJ + tl.arange(0, BJ)
        rc = tl.arange(0, BC)
        okj = rj < m
        okc = rc < c
        r = tl.load(R + rj[:, None] * c + rc[None, :], mask=okj[:, None] & okc[None, :],
                    other=0.0)
        acc = tl.zeros([BJ, BC], dtype=tl.float32)
        da = tl.zeros([BJ], dtype=tl.float32)
        for i0 in range(0, n, BI):
            ri = i0 + tl.arange(0, BI)
            oki = ri < n
            f = tl.load(F + ri[:, None] * c + rc[None, :], mask=oki[:, None] & okc[None, :],
                        other=0.0)
            e = tl.load(E + ri, mask=oki, other=0.0)
            s = tl.dot(r, tl.trans(f))  # neurons x points: S^T of the tile
            if WANT_ROWS:
                p = tl.where(s > 0, e[None, :], 0.0).to(f.dtype)
                acc = tl.dot(p, f, acc)
            if WANT_A:
                da += tl.sum(tl.maximum(s, 0.0) * e[None, :], axis=1)
        if WANT_ROWS:
            aj = tl.load(A + rj, mask=okj, other=0.0)
            tl.store(DR + rj[:, None] * c + rc[None, :], acc * aj[:, None],
                     mask=okj[:, None] & okc[None, :])
        if WANT_A:
            tl.store(DA + rj, da, mask=okj)
