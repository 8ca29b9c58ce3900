"""The certified bracket on lambda_min: its bounds hold where rounding matters, the tiled
Cholesky equals LAPACK's and resumes bit for bit, `fntk gram` reports the bracket in both of
its paths, and gram.dtype's bad inputs are one line."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest
import scipy.linalg as sla
import yaml

from fntk_dist.cli.main import main
from fntk_dist.data import write_dataset
from fntk_dist.gram import TileStore, load_gram
from fntk_dist.gram.bounds import cholesky_lower_bound, matvec_pass, rayleigh_upper_bound
from fntk_dist.gram.certify import Options, Source, bracket_lambda_min, dense_blocks
from fntk_dist.gram.cholesky import CholeskyFailed, DenseFactor, TiledFactor, shifted
from fntk_dist.gram.summary import tile_blocks


def rank_deficient(seed: int, n: int = 30) -> np.ndarray:
    """X X^T / n with X of rank n - 3: singular in exact arithmetic, not after rounding."""
    x = np.random.default_rng(seed).standard_normal((n, n - 3))
    h = x @ x.T / n
    return (h + h.T) / 2


def exact_lambda_min(h: np.ndarray) -> float:
    """lambda_min of the float64 matrix h, in 40 digits."""
    mpmath.mp.dps = 40
    return float(min(mpmath.eigsy(mpmath.matrix(h.tolist()), eigvals_only=True)))


def factors(h: np.ndarray, sigma: float) -> bool:
    try:
        sla.cholesky(shifted(h, sigma), lower=False, check_finite=False)
    except sla.LinAlgError:
        return False
    return True


def test_cholesky_bound_holds_where_the_factorization_overshoots_the_truth():
    """fl-Cholesky of a near-singular Gram succeeds at a shift above lambda_min (seed 10):
    sigma alone would be a false bound; sigma minus the backward-error term is a true one."""
    h = rank_deficient(10)
    lam = exact_lambda_min(h)
    sigma = max(s for s in lam + 2e-17 * np.arange(200) if factors(h, s))
    assert sigma > lam
    lower = cholesky_lower_bound(sigma, np.diag(h) - sigma)
    assert lower <= lam
    assert lam - lower < 1e-12  # and not vacuous: ~ n u tr(H)


def test_rayleigh_bound_is_above_the_exact_quotient():
    """Near a null vector the computed quotient falls below the exact one (rational
    arithmetic) in some cases; the bound is above it in all."""
    below = 0
    for seed in range(12):
        h = rank_deficient(seed)
        v = np.linalg.eigh(h)[1][:, 0]
        theta, upper = rayleigh_upper_bound(v, *matvec_pass(dense_blocks(h), v))
        f = [Fraction(t) for t in v]
        rows = [[Fraction(t) for t in r] for r in h]
        exact = sum(f[i] * sum(r[j] * f[j] for j in range(len(f))) for i, r in enumerate(rows))
        exact /= sum(t * t for t in f)
        below += theta < exact
        assert exact <= upper and upper - exact < 1e-13
    assert below > 0


def store_of(h: np.ndarray, path: Path, tile: int) -> TileStore:
    store = TileStore.create_or_open(path, config_hash="h", n=h.shape[0], tile=tile)
    for i, j in store.all_tiles():
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        store.write(i, j, h[r0:r1, c0:c1])
    return store


def spd(n: int, seed: int = 0) -> np.ndarray:
    """lambda_min about 0.9 (Marchenko-Pastur with 4n columns)."""
    x = np.random.default_rng(seed).standard_normal((n, 4 * n))
    return x @ x.T / n


@pytest.mark.parametrize("workers", [1, 3])
def test_tiled_factor_equals_lapack_and_solves(tmp_path, workers):
    h = spd(70)
    store = store_of(h, tmp_path / "g", tile=16)  # 5 blocks, the last of 6 rows
    f = TiledFactor(store, tmp_path / "f", 0.25)
    f.run(workers)
    r = DenseFactor(h, 0.25).r
    assert np.abs(f.dense() - r).max() <= 1e-12 * np.abs(r).max()
    b = np.random.default_rng(1).standard_normal((70, 3))
    np.testing.assert_allclose(f.solve(b), np.linalg.solve(h - 0.25 * np.eye(70), b),
                               rtol=1e-10)


def test_a_shift_above_lambda_min_fails(tmp_path):
    h = spd(40)
    store = store_of(h, tmp_path / "g", tile=16)
    with pytest.raises(CholeskyFailed):
        TiledFactor(store, tmp_path / "f", np.linalg.eigvalsh(h)[0] * 1.01).run()


class Stop(Exception):
    pass


def stop_after(k: int):
    seen = []

    def on_tile(tile, flops):
        seen.append(tile)
        if len(seen) == k:
            raise Stop

    return on_tile


@pytest.mark.parametrize("k,workers", [(1, 1), (4, 1), (7, 2)])
def test_a_killed_factorization_resumes_to_the_same_bits(tmp_path, k, workers):
    h = spd(70)
    store = store_of(h, tmp_path / "g", tile=16)
    whole = TiledFactor(store, tmp_path / "whole", 0.1)
    whole.run(workers)
    part = TiledFactor(store, tmp_path / "part", 0.1)
    with pytest.raises(Stop):
        part.run(workers, stop_after(k))
    reopened = TiledFactor(store, tmp_path / "part", 0.1)
    assert len(reopened.missing()) == len(store.all_tiles()) - k  # the finished tiles kept
    reopened.run(workers)
    for i, j in store.all_tiles():
        assert np.array_equal(reopened.store.read(i, j), whole.store.read(i, j))


def test_a_factor_of_another_shift_is_replaced(tmp_path):
    store = store_of(spd(40), tmp_path / "g", tile=16)
    TiledFactor(store, tmp_path / "f", 0.1).run()
    again = TiledFactor(store, tmp_path / "f", 0.2)
    assert len(again.missing()) == len(store.all_tiles())


def tiled_source(store: TileStore, folder: Path, on_tile=None) -> Source:
    def factor(sigma):
        f = TiledFactor(store, folder / "factor", sigma)
        f.run(1, on_tile)
        return f

    return Source(store.n, np.diag(store.assemble()).copy(), lambda: tile_blocks(store),
                  factor, "tiled")


def test_a_killed_bracket_replays_its_journal_and_ends_alike(tmp_path):
    """Killed in its second factorization (the one at the Lanczos estimate), the bracket reruns
    neither the first nor Lanczos, resumes the second, and ends on the same numbers."""
    h = spd(60)
    store = store_of(h, tmp_path / "g", tile=16)
    whole = bracket_lambda_min(tiled_source(store, tmp_path / "w"), None, Options(),
                               tmp_path / "w")
    assert len(whole["factorizations"]) == 2
    with pytest.raises(Stop):  # 10 tiles per factorization: the 13th is in the second
        bracket_lambda_min(tiled_source(store, tmp_path / "k", stop_after(13)), None,
                           Options(), tmp_path / "k")
    written = []
    again = bracket_lambda_min(tiled_source(store, tmp_path / "k",
                                            lambda t, f: written.append(t)),
                               None, Options(), tmp_path / "k")
    assert len(written) == 10 - 3
    for key in ("lambda_min_lower", "lambda_min_upper", "lambda_min_shift",
                "bottom_eigenvalues"):
        assert again[key] == whole[key]
    ev = np.linalg.eigvalsh(h)[0]
    assert again["lambda_min_lower"] <= ev <= again["lambda_min_upper"]
    assert again["lambda_min_rel_width"] <= 1e-3


@pytest.mark.parametrize("guess,tries", [(1.0, [True]), (3.0, [False, False, True, True])])
def test_an_estimate_saves_the_first_factorization(tmp_path, guess, tries):
    """gram.lambda_estimate: right, one factorization; 3 times too high, two fail (3x, 1.5x),
    0.75x factors, and a fourth at the Lanczos estimate tightens the bracket."""
    h = spd(60)
    ev = np.linalg.eigvalsh(h)[0]
    store = store_of(h, tmp_path / "g", tile=16)
    out = bracket_lambda_min(tiled_source(store, tmp_path / "c"), guess * ev, Options(),
                             tmp_path / "c")
    assert [f["ok"] for f in out["factorizations"]] == tries
    assert out["lambda_min_lower"] <= ev <= out["lambda_min_upper"]
    assert out["lambda_min_rel_width"] <= 1e-3


BASE = {"model": {"mode": "sketch_in", "m": 256, "k": 8, "sketch": "srht", "dtype": "float64"},
        "gram": {"tile": 16}, "tracking": {"wandb": False}}


def run_gram(tmp_path: Path, cfg: dict, *overrides: str, out: str = "g") -> tuple[int, dict]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["gram", str(path), *overrides, "--out", str(tmp_path / out), "--quiet"])
    summary = tmp_path / out / "summary.json"
    return code, json.loads(summary.read_text()) if code == 0 else {}


@pytest.mark.parametrize("path", ["assembled", "tiles"])
@pytest.mark.parametrize("duplicates", [False, True])
def test_fntk_gram_brackets_eigvalsh(tmp_path, path, duplicates):
    """Real NTK Grams, one with two duplicated points (singular but for the rounding of its
    entries: the bracket must hold the exact lambda_min of the stored matrix, 40 digits),
    assembled in memory or factored over the tiles."""
    x = np.random.default_rng(0).standard_normal((40, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if duplicates:
        x[20], x[33] = x[3], x[7]
    write_dataset(tmp_path / "x.parquet", x, np.zeros(40))
    cfg = {**BASE, "data": {"path": str(tmp_path / "x.parquet")}}
    extra = ["gram.assemble_max_n=10"] if path == "tiles" else []
    code, s = run_gram(tmp_path, cfg, *extra)
    assert code == 0
    h = load_gram(tmp_path / "g")
    ev = np.linalg.eigvalsh(h)[0]
    assert s["lambda_min_lower"] <= ev <= s["lambda_min_upper"]
    assert s["lambda_min_method"].startswith("in memory" if path == "assembled" else "tiled")
    if duplicates:
        np.testing.assert_allclose(h[3], h[20], rtol=0, atol=1e-14)
        assert s["lambda_min_lower"] <= exact_lambda_min(h) <= s["lambda_min_upper"]
        assert abs(ev) < 1e-14
    else:
        assert s["lambda_min_rel_width"] <= 1e-3
    assert (tmp_path / "g" / "certify" / "factor").is_dir() == (path == "tiles")


def test_float32_tiles_are_bracketed_as_stored(tmp_path):
    cfg = {**BASE, "data": {"source": "sphere", "n": 40, "d": 16}}
    code, s = run_gram(tmp_path, cfg, "gram.dtype=float32", "gram.assemble_max_n=10")
    assert code == 0 and s["tile_dtype"] == "float32"
    h = load_gram(tmp_path / "g")
    assert h.dtype == np.float32
    ev = np.linalg.eigvalsh(h.astype(np.float64))[0]
    assert s["lambda_min_lower"] <= ev <= s["lambda_min_upper"]


def test_certify_false_is_the_old_path(tmp_path):
    cfg = {**BASE, "data": {"source": "sphere", "n": 40, "d": 16}}
    code, s = run_gram(tmp_path, cfg, "gram.certify=false", "gram.assemble_max_n=10")
    assert code == 0 and s["lambda_min_lower"] is None and s["lambda_min_method"] is None
    assert s["lambda_min"] == pytest.approx(np.linalg.eigvalsh(load_gram(tmp_path / "g"))[0],
                                            rel=1e-5)


@pytest.mark.parametrize("overrides,needle", [
    (["gram.dtype=float16"], "gram.dtype"),
    (["model.dtype=float32", "gram.dtype=float64"], "gram.dtype: float64 tiles of a float32"),
    (["gram.factor_tasks=ray"], "gram.factor_tasks: ray runs the factor's tasks on the Gram's"),
    (["gram.factor_tasks=dask"], "gram.factor_tasks"),
    (["gram.factor_workers=0"], "gram.factor_workers"),
])
def test_bad_input_is_one_line(tmp_path, capsys, overrides, needle):
    cfg = {**BASE, "data": {"source": "sphere", "n": 20, "d": 16}}
    code, _ = run_gram(tmp_path, cfg, *overrides)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "g").exists()


def test_a_float32_store_is_never_resumed_as_float64(tmp_path, capsys):
    cfg = {**BASE, "data": {"source": "sphere", "n": 20, "d": 16}}
    assert run_gram(tmp_path, cfg, "gram.dtype=float32")[0] == 0
    code, _ = run_gram(tmp_path, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "differs in tile_dtype" in err[0]
    assert TileStore.open(tmp_path / "g").dtype == "float32"
