"""NTK kernel regression: what gradient descent on the linearised network predicts.

Linearised around its initialisation, a net trained by full-batch gradient descent on
L = 1/2 ||f(X) - y||^2 with step eta has residual r(t) = (I - eta H)^t r(0), r(0) = y - f0(X),
and on new points x

    f_t(x) = f0(x) + H(x, X) H^+ (I - (I - eta H)^t) r(0),

which tends, as t -> infinity, to f0(x) + H(x, X) H^+ r(0) (the component of r(0) in H's null
space is never fitted, hence the pseudo-inverse). Built from empirical_ntk's cross-Gram this is
the finite-width lazy predictor; built from the analytic kernel with f0 = 0 (its mean over
initialisations) it is the infinite-width one. Everything is computed in float64.
"""

from __future__ import annotations

import torch

from ..models.network import Network
from .empirical import empirical_ntk
from .limit import analytic_gram


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.as_tensor(t).detach().to("cpu", torch.float64)


def _gain(w: torch.Tensor, eta: float | None, steps: int | None, rtol: float) -> torch.Tensor:
    """g(w) with coef = Q g(Lambda) Q^T r: 1/w at infinite time, (1 - (1 - eta w)^t)/w else."""
    w = w.clamp_min(0.0)  # round-off can make a PSD Gram's smallest eigenvalues slightly negative
    if steps is None:
        keep = w > rtol * float(w.max())
        return torch.where(keep, 1.0 / torch.where(keep, w, 1.0), torch.zeros_like(w))
    # -expm1(t log1p(-eta w)) / w keeps its digits for small eta w (tends to eta t as w -> 0);
    # the plain power serves the rest (log1p is undefined past eta w = 1).
    ew = eta * w
    small = -torch.expm1(steps * torch.log1p(-ew.clamp_max(0.5))) / torch.where(w > 0, w, 1.0)
    plain = (1 - (1 - ew) ** steps) / torch.where(w > 0, w, 1.0)
    g = torch.where(ew <= 0.5, small, plain)
    return torch.where(w > 0, g, torch.full_like(w, eta * steps))


def kernel_predict(
    h_train: torch.Tensor, h_cross: torch.Tensor, y: torch.Tensor,
    f0_train: torch.Tensor | None = None, f0_test: torch.Tensor | None = None,
    eta: float | None = None, steps: int | None = None, rtol: float = 1e-12,
) -> torch.Tensor:
    """Predictions on test points of gradient descent on the linearised model (float64).

    h_train: H(X, X) (n, n); h_cross: H(X_test, X) (n_test, n); y: (n,) targets; f0_train and
    f0_test: the outputs at initialisation (zero when omitted). steps None: the infinite-time
    limit, with eigenvalues below rtol * lambda_max treated as zero; else exactly `steps` steps
    of size eta (which then must be given).
    """
    h, hc, y = _f64(h_train), _f64(h_cross), _f64(y)
    n = y.shape[0]
    if h.shape != (n, n):
        raise ValueError(f"h_train: expected shape ({n}, {n}), got {tuple(h.shape)}")
    if hc.dim() != 2 or hc.shape[1] != n:
        raise ValueError(f"h_cross: expected shape (n_test, {n}), got {tuple(hc.shape)}")
    if steps is not None and (eta is None or eta <= 0 or steps < 0):
        raise ValueError(f"eta: a finite run needs eta > 0 and steps >= 0, got {eta}, {steps}")
    f0 = torch.zeros_like(y) if f0_train is None else _f64(f0_train)
    f0t = torch.zeros(hc.shape[0], dtype=torch.float64) if f0_test is None else _f64(f0_test)
    w, q = torch.linalg.eigh((h + h.T) / 2)
    coef = q @ (_gain(w, eta, steps, rtol) * (q.T @ (y - f0)))
    return f0t + hc @ coef


def empirical_ntk_predict(
    net: Network, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
    block: int | None = None,
) -> torch.Tensor:
    """The infinite-time predictor of net linearised at its current weights, on x_test."""
    with torch.no_grad():
        f0, f0t = net(x), net(x_test)
    h = empirical_ntk(net, x, block=block)
    hc = empirical_ntk(net, x_test, x, block=block)
    return kernel_predict(h, hc, y, f0, f0t)


def analytic_ntk_predict(
    net: Network, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
) -> torch.Tensor | None:
    """The infinite-width predictor (analytic kernel, f0 = 0) where the net has one, else None.

    Dense layers: the kernel of the net's depth on X; a sketch_in first layer: on the sketched
    inputs Z = X V^T (limit.analytic_gram).
    """
    h = analytic_gram(net, x)
    if h is None:
        return None
    return kernel_predict(h, analytic_gram(net, x_test, x), y)


def prediction_errors(pred: torch.Tensor, y_test: torch.Tensor) -> dict[str, float]:
    """Mean squared error and the fraction of wrong signs (labels are +-1 on digits)."""
    pred, y_test = _f64(pred), _f64(y_test)
    return {"mse": float(((pred - y_test) ** 2).mean()),
            "error": float((torch.sign(pred) != torch.sign(y_test)).double().mean())}
