"""fntk_dist.data: synthetic sets, digits, the Parquet format and its errors, load_dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fntk_dist.data import (
    DataConfig,
    DataError,
    digits_dataset,
    load_dataset,
    read_dataset,
    sign_labels,
    sphere_points,
    teacher_labels,
    write_dataset,
)


@pytest.fixture(scope="module")
def digits():
    return digits_dataset()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_round_trip_is_exact(tmp_path_factory, n, d, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)) * 1e3, rng.standard_normal(n)
    path = tmp_path_factory.mktemp("rt") / "set.parquet"
    write_dataset(path, x, y)
    x2, y2 = read_dataset(path)
    assert x2.dtype == y2.dtype == np.float64
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "set.parquet"  # parent made on demand
    write_dataset(path, np.ones((3, 2)), np.zeros(3))
    write_dataset(path, np.ones((2, 2)), np.zeros(2))  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["set.parquet"]

    def broken(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(path, np.ones((5, 2)), np.zeros(5))
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == ["set.parquet"]
    assert read_dataset(path)[0].shape == (2, 2)


@pytest.mark.parametrize("x, y, what", [
    (np.ones(3), np.ones(3), "2-D"),
    (np.ones((0, 2)), np.ones(0), "2-D"),
    (np.ones((3, 2)), np.ones(2), "shape"),
    (np.array([[1.0], [np.nan]]), np.ones(2), "row 1"),
    (np.ones((2, 1)), np.array([0.0, np.inf]), "'y'"),
])
def test_write_rejects_bad_arrays_and_leaves_nothing(tmp_path, x, y, what):
    with pytest.raises(DataError, match="set.parquet") as err:
        write_dataset(tmp_path / "set.parquet", x, y)
    assert what in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_read_accepts_lists_float32_and_int_labels_and_ignores_extra_columns(tmp_path):
    path = tmp_path / "loose.parquet"
    table = pa.table({
        "id": pa.array(["a", "b"]),
        "x": pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.large_list(pa.float32())),
        "y": pa.array([1, -1], type=pa.int8()),
    })
    pq.write_table(table, path)
    x, y = read_dataset(path)
    np.testing.assert_array_equal(x, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(y, [1.0, -1.0])
    assert x.dtype == y.dtype == np.float64


F64, LIST_F64 = pa.float64(), pa.list_(pa.float64())


def _table(x, y, x_type=LIST_F64, y_type=F64):
    return pa.table({"x": pa.array(x, type=x_type), "y": pa.array(y, type=y_type)})


BAD_TABLES = {
    "no_x": (pa.table({"y": [1.0]}), "missing column 'x'"),
    "no_y": (pa.table({"x": pa.array([[1.0]])}), "missing column 'y'"),
    "x_type": (pa.table({"x": [1.0], "y": [1.0]}), "has type double, expected"),
    "x_strings": (_table([["a"]], [1.0], x_type=pa.list_(pa.string())), "expected"),
    "y_type": (_table([[1.0]], ["a"], y_type=pa.string()), "column 'y' has type string"),
    "ragged": (_table([[1.0, 2.0], [1.0, 2.0], [3.0]], [1.0, 2.0, 3.0]), "row 2 has 1"),
    "empty_rows": (_table([[], []], [1.0, 2.0]), "empty"),
    "null_row": (_table([[1.0], None], [1.0, 2.0]), "null in row 1"),
    "null_entry": (_table([[1.0, 2.0], [3.0, None]], [1.0, 2.0]), "null entry in row 1"),
    "null_y": (_table([[1.0], [2.0]], [1.0, None]), "'y' has a null in row 1"),
    "zero_rows": (_table([], []), "zero rows"),
    "nan_x": (_table([[1.0], [2.0], [np.nan]], [1.0, 2.0, 3.0]), "'x' has NaN or Inf in row 2"),
    "inf_y": (_table([[1.0], [2.0]], [np.inf, 2.0]), "'y' has NaN or Inf in row 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_read_rejects_bad_tables(tmp_path, case):
    table, what = BAD_TABLES[case]
    path = tmp_path / f"{case}.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=f"{case}.parquet") as err:
        read_dataset(path)
    assert what in str(err.value)
    assert "\n" not in str(err.value)


def test_read_rejects_missing_directory_and_non_parquet(tmp_path):
    with pytest.raises(DataError, match="nothere.parquet.*no such file"):
        read_dataset(tmp_path / "nothere.parquet")
    (tmp_path / "adir.parquet").mkdir()
    with pytest.raises(DataError, match="adir.parquet.*directory"):
        read_dataset(tmp_path / "adir.parquet")
    (tmp_path / "text.parquet").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="text.parquet.*not a Parquet file"):
        read_dataset(tmp_path / "text.parquet")


def test_sphere_points_unit_norm_and_seeded():
    x = sphere_points(50, 7, seed=3)
    assert x.shape == (50, 7) and x.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(x, sphere_points(50, 7, seed=3))
    assert not np.allclose(x, sphere_points(50, 7, seed=4))
    for bad in ({"n": 0, "d": 3}, {"n": 3, "d": 0}):
        with pytest.raises(ValueError, match=next(k for k, v in bad.items() if v == 0)):
            sphere_points(seed=0, **bad)


def test_sign_and_teacher_labels():
    s = sign_labels(200, seed=1)
    assert set(np.unique(s)) == {-1.0, 1.0}
    np.testing.assert_array_equal(s, sign_labels(200, seed=1))
    x = sphere_points(100, 5, seed=0)
    t = teacher_labels(x, seed=2, width=16)
    assert t.shape == (100,)
    np.testing.assert_array_equal(t, teacher_labels(x, seed=2, width=16))
    assert abs(t.mean()) < 1e-12 and t.std() == pytest.approx(1.0)
    assert not np.allclose(t, teacher_labels(x, seed=3, width=16))
    np.testing.assert_array_equal(teacher_labels(x[:1], seed=2), [0.0])  # zero std: unscaled


def test_digits(digits):
    x, y = digits
    assert x.shape == (1797, 64) and y.shape == (1797,)
    assert x.dtype == y.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-12)
    assert set(np.unique(y)) == {-1.0, 1.0}


def test_load_sphere_split_and_determinism():
    cfg = DataConfig(n=40, d=6, labels="sign", seed=5, test_fraction=0.26)
    ds = load_dataset(cfg)
    assert (ds.name, ds.n, ds.d) == ("sphere", 30, 6)
    assert ds.x_test.shape == (10, 6) and ds.y_test.shape == (10,)
    again = load_dataset(cfg)
    assert np.array_equal(ds.x, again.x) and np.array_equal(ds.y_test, again.y_test)
    whole = load_dataset(DataConfig(n=40, d=6, labels="sign", seed=5))
    assert whole.x_test.shape == (0, 6) and whole.y_test.shape == (0,)
    np.testing.assert_array_equal(whole.x, sphere_points(40, 6, 5))
    # The split is a partition of the same 40 points.
    joined = np.concatenate([ds.x, ds.x_test])
    assert sorted(map(tuple, joined)) == sorted(map(tuple, whole.x))
    assert load_dataset(DataConfig(n=20, d=3)).y.std() == pytest.approx(1.0)  # teacher


def test_load_digits_subset_and_split(digits):
    ds = load_dataset(DataConfig(source="digits", n=100, seed=1, test_fraction=0.1))
    assert (ds.name, ds.n, ds.d, len(ds.x_test)) == ("digits", 90, 64, 10)
    other = load_dataset(DataConfig(source="digits", n=100, seed=2, test_fraction=0.1))
    assert not np.array_equal(ds.x, other.x)
    full = load_dataset(DataConfig(source="digits", n=None))
    assert full.n == 1797 and len(full.x_test) == 0
    with pytest.raises(DataError, match=r"data\.n.*1797"):
        load_dataset(DataConfig(source="digits", n=1798))


def test_load_parquet(tmp_path):
    x, y = sphere_points(12, 3, seed=0), sign_labels(12, seed=0)
    path = tmp_path / "mine.parquet"
    write_dataset(path, x, y)
    ds = load_dataset(DataConfig(path=str(path), n=None, test_fraction=0.25, seed=7))
    assert (ds.name, ds.n, len(ds.x_test)) == ("mine.parquet", 9, 3)
    joined = np.concatenate([ds.x, ds.x_test])
    assert sorted(map(tuple, joined)) == sorted(map(tuple, x))
    sub = load_dataset(DataConfig(source="parquet", path=str(path), n=5))
    assert sub.n == 5 and all(any(np.array_equal(r, s) for s in x) for r in sub.x)
    with pytest.raises(DataError, match=r"data\.n.*12"):
        load_dataset(DataConfig(path=str(path), n=13))


def test_config_path_implies_parquet():
    assert DataConfig(path="a.parquet").source == "parquet" and DataConfig().source == "sphere"


def test_config_n_defaults_to_256_sphere_points_and_all_rows_of_files():
    assert DataConfig().n == 256
    assert DataConfig(source="digits").n is None and DataConfig(path="a.parquet").n is None


@pytest.mark.parametrize("kwargs, key", [
    ({"bogus": 1}, "bogus"), ({"test_fraction": 1.0}, "test_fraction"),
    ({"test_fraction": -0.1}, "test_fraction"), ({"source": "parquet"}, "path"),
    ({"source": "digits", "path": "a.parquet"}, "path"),
    ({"source": "sphere", "path": "a.parquet"}, "path"), ({"n": 0}, "n"),
    ({"d": 0}, "d"), ({"teacher_width": 0}, "teacher_width"),
])
def test_config_rejects(kwargs, key):
    with pytest.raises(ValidationError) as err:
        DataConfig(**kwargs)
    assert err.value.errors()[0]["loc"] == (key,)
