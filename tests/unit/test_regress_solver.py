"""The kernel regression's numerical core: the cross-Gram mat-vec, preconditioned CG against a
direct solve, the Nystrom preconditioner, and CG resumed from a saved state."""

from __future__ import annotations

import pytest
import torch

from fntk_dist import empirical_ntk, ntk_matvec
from fntk_dist.models.config import ModelConfig
from fntk_dist.ntk.nystrom import nystrom_preconditioner, sample_columns
from fntk_dist.ntk.pcg import cg_start, pcg
from fntk_dist.ntk.rank_term import rank_factor, rank_matvec
from fntk_dist.regress.state import load_state, save_state

F64 = torch.float64


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=1)


def _net(mode: str, m: int = 128, k: int | None = 8, **kw):
    sketch = {"sketch": "gaussian"} if mode.startswith("sketch") else {}
    return ModelConfig(mode=mode, m=m, k=k, **sketch, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("mode,k,depth,train_output", [
    ("sketch_in", 6, None, True), ("sketch_out", 6, None, False), ("lowrank", 5, None, True),
    ("dense", None, None, True), ("lowrank", 5, 2, True), ("dense", None, 3, False)])
def test_cross_matvec_is_the_cross_gram_times_v(mode, k, depth, train_output):
    net = _net(mode, m=48, k=k, depth=depth, train_output=train_output).build(10)
    x, x2 = _sphere(23, 10, 0), _sphere(31, 10, 1)
    v = torch.randn(31, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref = empirical_ntk(net, x, x2) @ v
    got = ntk_matvec(net, x, v, block=16, tile=7, x2=x2)  # several blocks and point tiles
    assert _rel(got, ref) < 1e-13
    assert _rel(ntk_matvec(net, x, v[:, 0], x2=x2), ref[:, 0]) < 1e-13
    with pytest.raises(ValueError, match=r"v: expected shape \(31,\)"):
        ntk_matvec(net, x, v[:23], x2=x2)


@pytest.mark.parametrize("mode,train_output", [("lowrank", True), ("sketch_out", False)])
def test_shards_with_v_frozen_plus_the_summed_rank_term_give_the_whole_matvec(mode,
                                                                              train_output):
    """What the Ray operator computes for a trained V: the shards' other terms (V frozen) add,
    and V's term comes once from G summed over the shards."""
    cfg = _net(mode, m=50, k=5, train_output=train_output)
    x, x2 = _sphere(21, 9, 7), _sphere(13, 9, 8)
    v = torch.randn(13, generator=torch.Generator().manual_seed(9), dtype=F64)
    ref = ntk_matvec(cfg.build(9), x, v, x2=x2)
    other, g1, g2 = torch.zeros(21, dtype=F64), 0, 0
    for lo, hi in [(0, 17), (17, 50)]:
        shard = cfg.build(9, neurons=(lo, hi))
        g1, g2 = g1 + rank_factor(shard, x, block=8), g2 + rank_factor(shard, x2)
        shard.layers[0].V.requires_grad_(False)
        if shard.groups:
            other += ntk_matvec(shard, x, v, x2=x2)
    assert _rel(other + rank_matvec(x, g1, v, 50, x2, g2), ref) < 1e-13


def test_pcg_at_n_4096_agrees_with_a_direct_solve():
    n, ridge = 4096, 0.05
    x = _sphere(n, 16, 0)
    net = _net("sketch_in").build(16)
    b = torch.sign(x[:, 0]) - 0.3 * x[:, 1]
    h = empirical_ntk(net, x)
    direct = torch.linalg.solve(h + ridge * torch.eye(n, dtype=F64), b)
    idx = sample_columns(n, 256, seed=0)
    precond = nystrom_preconditioner(h[:, idx], idx, ridge)
    st = pcg(b, lambda v: ntk_matvec(net, x, v) + ridge * v, precond, rtol=1e-11, maxiter=500)
    assert st.relative_residual <= 1e-11 and len(st.residuals) == st.iteration + 1
    assert _rel(st.x, direct) < 1e-8


def test_the_preconditioner_cuts_iterations_on_an_ill_conditioned_gram():
    n, ridge = 1024, 1e-4
    x = _sphere(n, 16, 3)
    net = _net("sketch_in", m=64, k=8).build(16)
    h = empirical_ntk(net, x)
    w = torch.linalg.eigvalsh(h)
    assert (w[-1] + ridge) / (w[0] + ridge) > 1e5  # ill-conditioned indeed
    b = torch.sign(x[:, 0])

    def apply_a(v: torch.Tensor) -> torch.Tensor:
        return h @ v + ridge * v

    idx = sample_columns(n, 200, seed=1)
    precond = nystrom_preconditioner(h[:, idx], idx, ridge)
    with_p = pcg(b, apply_a, precond, rtol=1e-8, maxiter=5000)
    plain = pcg(b, apply_a, None, rtol=1e-8, maxiter=5000)
    assert with_p.relative_residual <= 1e-8 and plain.relative_residual <= 1e-8
    assert with_p.iteration * 3 < plain.iteration
    assert _rel(with_p.x, plain.x) < 1e-3  # the same solution (to the residual's accuracy)


def test_nystrom_is_exact_when_the_columns_span_h():
    """Rank-r H sampled at r independent columns: U Lambda U^T = H (up to the stabilising
    shift's effect) and P^{-1} (H + mu I) has its eigenvalues at lambda_r + mu on U and 1 off
    it, so CG needs about two iterations."""
    g = torch.Generator().manual_seed(4)
    f = torch.randn(300, 12, generator=g, dtype=F64)
    h = f @ f.T
    idx = sample_columns(300, 12, seed=0)
    p = nystrom_preconditioner(h[:, idx], idx, mu=0.5)
    assert p.rank == 12
    approx = p.u @ torch.diag(p.lam) @ p.u.T
    assert float(torch.linalg.matrix_norm(approx - h) / torch.linalg.matrix_norm(h)) < 1e-8
    st = pcg(torch.randn(300, generator=g, dtype=F64), lambda v: h @ v + 0.5 * v, p, rtol=1e-12)
    assert st.iteration <= 3


def test_nystrom_survives_duplicate_points_and_drops_null_directions():
    x = _sphere(40, 8, 5)
    x = torch.cat([x, x[:10]])  # ten points twice: H_SS singular when both copies are sampled
    h = empirical_ntk(_net("sketch_in", m=32, k=4).build(8), x)
    idx = torch.cat([torch.arange(10), torch.arange(40, 50)])
    p = nystrom_preconditioner(h[:, idx], idx, mu=0.0)
    assert p.rank <= 10 and bool((p.lam > 0).all())
    v = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert bool(torch.isfinite(p(v)).all())
    for bad, match in [((h[:, idx], idx, -1.0), "mu: expected >= 0"),
                       ((h[:, idx], idx[:-1], 0.0), "idx: expected 20 distinct")]:
        with pytest.raises(ValueError, match=match):
            nystrom_preconditioner(*bad)
    with pytest.raises(ValueError, match="r: expected 1 <= r <= n = 50"):
        sample_columns(50, 51, 0)


def test_cg_killed_after_k_iterations_resumes_to_the_same_result(tmp_path):
    n, ridge = 300, 1e-3
    x = _sphere(n, 8, 6)
    net = _net("lowrank", m=64, k=4, train_output=True).build(8)
    b = torch.cos(3 * x[:, 0])

    def apply_a(v: torch.Tensor) -> torch.Tensor:
        return ntk_matvec(net, x, v) + ridge * v

    idx = sample_columns(n, 40, seed=2)
    precond = nystrom_preconditioner(empirical_ntk(net, x, x[idx]), idx, ridge)
    whole = pcg(b, apply_a, precond, rtol=1e-10, maxiter=400)
    identity = {"case": "lowrank"}

    class Killed(Exception):
        pass

    def save_then_die(st) -> None:
        save_state(tmp_path, st, identity, [])
        if st.iteration == 7:
            raise Killed

    with pytest.raises(Killed):
        pcg(b, apply_a, precond, rtol=1e-10, maxiter=400, on_iteration=save_then_die)
    saved, rows = load_state(tmp_path, identity)
    assert saved.iteration == 7 and rows == []
    resumed = pcg(b, apply_a, precond, rtol=1e-10, maxiter=400, state=saved)
    assert resumed.iteration == whole.iteration
    assert resumed.residuals == whole.residuals
    assert torch.equal(resumed.x, whole.x)
    with pytest.raises(ValueError, match="differs in case"):
        load_state(tmp_path, {"case": "dense"})


def test_cg_refuses_what_it_cannot_solve():
    b = torch.ones(3, dtype=F64)
    with pytest.raises(ArithmeticError, match="not positive definite"):
        pcg(b, lambda v: -v)
    with pytest.raises(ValueError, match="rtol, maxiter"):
        pcg(b, lambda v: v, rtol=0.0)
    st = cg_start(torch.zeros(3, dtype=F64), lambda v: v)
    assert pcg(torch.zeros(3, dtype=F64), lambda v: v, state=st).iteration == 0
