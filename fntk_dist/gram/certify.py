"""A certified bracket lambda_min_lower <= lambda_min(H) <= lambda_min_upper for a stored Gram.

The steps (DESIGN.md, "Certified lambda_min"):
1. A shift sigma below lambda_min: from an estimate (the assembled matrix's eigvalsh, or
   gram.lambda_estimate) placed rtol/4 under it, or, with no estimate, -8 e0 (e0 = the
   Cholesky error bound at sigma = 0: H + 8 e0 I factors whenever H is positive semidefinite
   to within its rounding; at least sqrt(tiny), so that a Gram that vanishes has a shift too).
2. A Cholesky of fl(H - sigma I); where it breaks down, sigma moves down four times its
   distance to the estimate (at least halfway to 0), and again, up to
   gram.certify_max_factorizations. Its success
   proves lambda_min(H) >= sigma - error (fntk_dist.gram.bounds: Demmel's backward error in
   Rump's normwise form).
3. Shift-invert Lanczos (ARPACK on (R^T R)^{-1}) with the first factor that succeeds: the bottom
   eigenvalues, in a few dozen solves even where they cluster.
4. Where the bracket is wider than rtol, one more factorization at the Lanczos estimate minus
   rtol/4 lifts the lower bound next to it.
5. The upper bound: the Rayleigh quotient of the Lanczos vector for lambda_min, from one exact
   pass over the stored tiles with its rounding bounded.

Every decision is journaled (one JSON line each, beside the factor tiles), with the Ritz vector
saved, so a killed run replays its finished factorizations and Lanczos run and resumes an
unfinished factorization from its finished tiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from ..atomic import atomic_path
from . import journal
from .bounds import (
    Block,
    cholesky_error,
    cholesky_lower_bound,
    matvec_pass,
    rayleigh_upper_bound,
)
from .cholesky import CholeskyFailed


class Factor(Protocol):
    sigma: float

    def solve(self, x: np.ndarray) -> np.ndarray:
        """(R^T R)^{-1} x, R^T R = fl(H - sigma I)."""


@dataclass
class Source:
    """What the bracket needs of H: its size and diagonal, a pass over its blocks, a factor
    of fl(H - sigma I) (raising CholeskyFailed), and a name for the method."""

    n: int
    diag: np.ndarray
    blocks: Callable[[], Iterable[Block]]
    factor: Callable[[float], Factor]
    method: str


@dataclass
class Options:
    rtol: float = 1e-3
    max_factorizations: int = 4
    bottom: int = 3
    on_solve: Callable[[int], None] | None = None  # after each Lanczos solve (progress)


def lower_at(diag: np.ndarray, sigma: float) -> float:
    """The certified lower bound once fl(H - sigma I) has factored."""
    return cholesky_lower_bound(sigma, diag - sigma)  # fl(h_ii - sigma), as `shifted` forms it


def _next_shift(tried: list[tuple[float, bool]], est: float | None, diag: np.ndarray,
                e0: float, opt: Options) -> float | None:
    """The next sigma to factor, or None when the bracket is as tight as it will get."""
    if len(tried) >= opt.max_factorizations:
        return None
    ok = [s for s, good in tried if good]
    best = max(ok) if ok else None
    # Below 8 e0 a shift's distance is lost in the rounding; sqrt(tiny) keeps 1 / (lambda -
    # sigma) finite for a Gram that vanishes (H = 0 has e0 ~ 1e-300).
    floor = max(8 * e0, float(np.sqrt(np.finfo(np.float64).tiny)))
    if est is None:
        ref, target = 0.0, -floor
    else:
        ref, target = est, est - max(opt.rtol / 4 * abs(est), floor)
    if best is not None:
        if est is None or est - lower_at(diag, best) <= opt.rtol * abs(est):
            return None
        if target <= best + (est - best) / 2:  # not worth a factorization
            return None
    failed = [s for s, good in tried if not good and (best is None or s > best)]
    if failed and target >= min(failed):  # lambda_min is below every failed shift: back off,
        s = min(failed)  # four times the distance of the lowest failure, at least halfway to 0
        # (a Gram is positive semidefinite, so a bad estimate is too high)
        target = s - 3 * max(ref - s, floor)
        if s > 0:
            target = min(target, s / 2)
        if best is not None and target <= best:
            return None
    return float(target)


def shift_invert(factor: Factor, n: int, k: int, on_solve: Callable[[int], None] | None,
                 seed: int = 0) -> tuple[list[float], np.ndarray, int]:
    """The k smallest eigenvalues of H (ascending) from the largest of (H - sigma I)^{-1},
    the unit vector of the smallest, and the number of solves."""
    count = 0

    def solve(x: np.ndarray) -> np.ndarray:
        nonlocal count
        count += 1
        y = factor.solve(np.asarray(x, dtype=np.float64))
        if on_solve is not None:
            on_solve(count)
        return y

    k = max(1, min(k, n - 2))
    if n <= max(32, 2 * k + 2):  # ARPACK needs k < n - 1: the inverse itself, column by column
        m = solve(np.eye(n))
        mu, vecs = np.linalg.eigh((m + m.T) / 2)
        mu, vecs = mu[::-1][:k], vecs[:, ::-1][:, :k]
    else:
        op = LinearOperator((n, n), matvec=solve, dtype=np.float64)
        v0 = np.random.default_rng(seed).standard_normal(n)
        mu, vecs = eigsh(op, k=k, which="LA", v0=v0, tol=1e-12)
    order = np.argsort(-mu)  # the largest mu is the smallest eigenvalue of H
    mu, vecs = mu[order], vecs[:, order]
    if not mu[0] > 0:
        raise ValueError("shift-invert Lanczos: (H - sigma I)^{-1} is not positive definite")
    values = [float(factor.sigma + 1.0 / m) if m > 0 else float("inf") for m in mu]
    v = vecs[:, 0]
    return values, v / np.linalg.norm(v), count


class _Log:
    """The bracket's decisions: in memory, or journaled in `folder` with the Ritz vector."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.records = journal.replay(folder / "certify.jsonl") if folder else []
        self.vector: np.ndarray | None = None
        if folder is not None and (folder / "ritz.npy").is_file():
            self.vector = np.load(folder / "ritz.npy")
        if self.vector is None:  # a Ritz record without its vector is replayed as not done
            self.records = [r for r in self.records if r.get("event") != "ritz"]

    def add(self, rec: dict, vector: np.ndarray | None = None) -> None:
        if self.folder is not None:
            if vector is not None:  # the vector first: a record always has its vector
                with atomic_path(self.folder / "ritz.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, vector)
            journal.append(self.folder / "certify.jsonl", rec)
        self.records.append(rec)
        if vector is not None:
            self.vector = vector

    def tried(self) -> list[tuple[float, bool]]:
        return [(float.fromhex(r["sigma"]), bool(r["ok"])) for r in self.records
                if r.get("event") == "factor"]

    def ritz(self) -> dict | None:
        return next((r for r in self.records if r.get("event") == "ritz"), None)


def bracket_lambda_min(src: Source, estimate: float | None, opt: Options,
                       folder: Path | None = None) -> dict:
    """lambda_min_lower <= lambda_min(H) <= lambda_min_upper and how they were found (summary
    keys); folder: where the decisions are journaled (None: in memory, not resumable)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = _Log(folder)
    e0 = cholesky_error(np.abs(src.diag) + np.finfo(np.float64).tiny)
    factor: Factor | None = None
    while True:
        ok = [s for s, good in log.tried() if good]
        ritz = log.ritz()
        if ok and ritz is None:  # Lanczos with the first factor that succeeded
            if factor is None or factor.sigma != ok[0]:
                factor = src.factor(ok[0])  # complete already: reopened, or refactored in memory
            t1 = time.perf_counter()
            values, v, solves = shift_invert(factor, src.n, opt.bottom, opt.on_solve)
            log.add({"event": "ritz", "sigma": ok[0].hex(), "values": values, "solves": solves,
                     "seconds": time.perf_counter() - t1}, vector=v)
            continue
        est = ritz["values"][0] if ritz else estimate
        sigma = _next_shift(log.tried(), est, src.diag, e0, opt)
        if sigma is None:
            break
        t1 = time.perf_counter()
        try:
            factor, good = src.factor(sigma), True
        except CholeskyFailed:
            factor, good = None, False
        log.add({"event": "factor", "sigma": sigma.hex(), "ok": good,
                 "seconds": time.perf_counter() - t1})
    ok = [s for s, good in log.tried() if good]
    ritz = log.ritz()
    out = {"lambda_min_lower": None, "lambda_min_upper": None, "lambda_min_estimate": None,
           "lambda_min_rel_width": None, "lambda_min_shift": None, "ritz_residual": None,
           "bottom_eigenvalues": None,
           "lambda_min_method": f"{src.method}: no shift factored in {opt.max_factorizations} "
                                "tries (gram.certify_max_factorizations)"}
    if ok:
        best = max(ok)
        v = log.vector
        w, a = matvec_pass(src.blocks(), v)
        theta, upper = rayleigh_upper_bound(v, w, a)
        lower = lower_at(src.diag, best)
        out |= {"lambda_min_lower": lower, "lambda_min_upper": upper,
                "lambda_min_estimate": theta, "lambda_min_shift": best,
                "lambda_min_rel_width": (upper - lower) / upper if upper > 0 else None,
                "ritz_residual": float(np.linalg.norm(w - theta * v) / np.linalg.norm(v)),
                "bottom_eigenvalues": ritz["values"],
                "lambda_min_method": f"{src.method}; lower: fl-Cholesky of H - sigma I with "
                                     "Demmel's backward error (Rump's form, gamma_2n+4); upper: "
                                     "Rayleigh quotient of the shift-invert Lanczos vector, "
                                     "rounding bounded"}
    facts = [r for r in log.records if r.get("event") == "factor"]
    out |= {"factorizations": [{"sigma": float.fromhex(r["sigma"]), "ok": r["ok"],
                                "seconds": r["seconds"]} for r in facts],
            "factor_seconds": sum(r["seconds"] for r in facts),
            "lanczos_solves": ritz["solves"] if ritz else None,
            "lanczos_seconds": ritz["seconds"] if ritz else None,
            "certify_seconds": time.perf_counter() - t0}
    return out


def dense_blocks(h: np.ndarray, rows: int = 2048) -> Iterable[Block]:
    """Row blocks of an assembled symmetric H, in float64."""
    n = h.shape[0]
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        yield r0, r1, 0, n, np.asarray(h[r0:r1], dtype=np.float64), False

