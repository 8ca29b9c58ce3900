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


def autograd_ntk(
    module: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None
) -> torch.Tensor:
    """H(X1, X2) = J(X1) J(X2)^T over the module's parameters with requires_grad=True."""
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("module: has no parameters with requires_grad=True")
    j1 = _jacobians(module, params, x1)
    j2 = j1 if x2 is None else _jacobians(module, params, x2)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    return sum(j1[k].reshape(n1, -1) @ j2[k].reshape(n2, -1).T for k in params)
