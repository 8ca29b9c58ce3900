"""H v without forming H, from the net's factors (for Grams too large to store).

Per neuron block b with masks S_b and features F (X or Z):
    W/U part: (1/m) rowsum(S_b o (F (F^T diag(v) S_b)))
    a part:   (1/m) R_b (R_b^T v)
    V part:   (1/m) rowsum((G (G^T diag(v) X)) o X), with G reduced over all blocks first.
Memory O(n * (block + d + k)); one pass over the neurons per call.
"""

from __future__ import annotations

import torch

from ..models.net import TwoLayerNet
from ..models.validation import prepare_inputs
from .empirical import neuron_blocks


def ntk_matvec(
    net: TwoLayerNet, x: torch.Tensor, v: torch.Tensor, block: int | None = None
) -> torch.Tensor:
    """H(X, X) @ v for v of shape (n,) or (n, p), exactly, in float64 accumulation."""
    x = prepare_inputs(x, net.d, net.dtype, net.device, "X")
    n = x.shape[0]
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if v.dim() not in (1, 2) or v.shape[0] != n:
        raise ValueError(f"v: expected shape ({n},) or ({n}, p), got {tuple(v.shape)}")
    vec = v.dim() == 1
    vv = (v[:, None] if vec else v).to(dtype=net.dtype, device=net.device)
    trained = net.trained
    need_s, need_r, need_g = ("W" in trained or "U" in trained), "a" in trained, "V" in trained
    out = torch.zeros(n, vv.shape[1], dtype=torch.float64, device=net.device)
    g = torch.zeros(n, net.k, dtype=net.dtype, device=net.device) if need_g else None
    with torch.no_grad():
        f = net.features(x)
        for i0, i1 in neuron_blocks(net, block, n):
            p = net.preact(f, i0, i1)
            s = (p > 0).to(net.dtype)
            if need_s:
                for j in range(vv.shape[1]):
                    m_j = f.T @ (s * vv[:, j : j + 1])  # (dim F, B)
                    out[:, j] += ((f @ m_j) * s).sum(dim=1).to(torch.float64)
            if need_r:
                r = torch.relu(p)
                out += (r @ (r.T @ vv)).to(torch.float64)
            if need_g:
                g += net.to_rank(s * net.a[i0:i1], i0, i1)
        if need_g:
            for j in range(vv.shape[1]):
                a_j = g.T @ (x * vv[:, j : j + 1])  # (k, d)
                out[:, j] += ((g @ a_j) * x).sum(dim=1).to(torch.float64)
    out = (out / net.m).to(net.dtype)
    return out[:, 0] if vec else out
