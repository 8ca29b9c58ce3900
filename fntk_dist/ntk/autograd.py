"""Reference NTK of any torch module by Jacobian contraction (torch.func). O(n P) memory."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev


def _jacobians(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor):
    def f(p):
        out = functional_call(module, p, (x,))
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.dim() != 1 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"module: expected one output per row, ({x.shape[0]},), got {tuple(out.shape)}"
            )
        return out

    return jacrev(f)(params)


def _jacobian_rows(module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                   chunk: int | None) -> dict[str, torch.Tensor]:
    """Each parameter's Jacobian, (rows, numel), from `chunk` rows of x at a time: a row's
    output depends on that row alone, so the pieces stack. jacrev's intermediates (one
    backward pass per output, batched) then scale with the chunk, not with n; J itself is
    still n x P."""
    rows = x.shape[0]
    step = rows if chunk is None else chunk
    parts = [_jacobians(module, params, x[i:i + step]) for i in range(0, rows, step)]
    return {k: torch.cat([p[k].reshape(p[k].shape[0], -1) for p in parts]) for k in params}


def autograd_ntk(
    module: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """H(X1, X2) = J(X1) J(X2)^T over the module's parameters with requires_grad=True.

    chunk: rows per jacrev call (default: all at once)."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)
                              or chunk < 1):
        raise ValueError(f"chunk: expected an integer >= 1, got {chunk!r}")
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("module: has no parameters with requires_grad=True")
    j1 = _jacobian_rows(module, params, x1, chunk)
    j2 = j1 if x2 is None else _jacobian_rows(module, params, x2, chunk)
    return sum(j1[k] @ j2[k].T for k in params)
