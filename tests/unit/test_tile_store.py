"""Tile store: round trip, resume, refusal of foreign folders and configs, corruption recovery,
the append-only manifest journal."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fntk_dist.gram.tile_file import stage_tile
from fntk_dist.gram.tile_store import JOURNAL, TileStore, TileStoreError, iter_tiles, load_gram

N, TILE = 23, 5  # grid of 5 blocks, the last 3 rows


def sym(n: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, n))
    return a + a.T


def fill(store: TileStore, h: np.ndarray) -> None:
    for i, j in store.all_tiles():
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        store.write(i, j, h[r0:r1, c0:c1])


def new(path, **kw) -> TileStore:
    args = {"config_hash": "abc123" * 8, "n": N, "tile": TILE} | kw
    return TileStore.create_or_open(path, **args)


@pytest.fixture
def full(tmp_path):
    h = sym(N)
    store = new(tmp_path / "g", meta={"who": "test"})
    fill(store, h)
    store.compact()  # every tile in manifest.json, as a finished job leaves it
    return store, h


def test_round_trip(full):
    store, h = full
    assert store.grid() == 5 and store.bounds(4) == (20, 23)
    assert store.complete()
    np.testing.assert_array_equal(store.assemble(), h)
    np.testing.assert_array_equal(load_gram(store.path), h)
    v = np.random.default_rng(1).standard_normal((N, 3))
    np.testing.assert_allclose(store.matvec(v[:, 0]), h @ v[:, 0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(store.matvec(v), h @ v, rtol=1e-12, atol=1e-12)
    seen = [(i, j) for i, j, _ in iter_tiles(store.path)]
    assert seen == store.all_tiles() and len(seen) == 15
    m = json.loads((store.path / "manifest.json").read_text())
    assert m["meta"] == {"who": "test"} and m["tiles"]["4_4"]["rows"] == [20, 23]
    assert store.disk_bytes() == sum(t["bytes"] for t in m["tiles"].values())


def test_resume(tmp_path):
    h = sym(N)
    store = new(tmp_path)
    todo = store.missing()
    assert len(todo) == 15
    for k, (i, j) in enumerate(todo[:7]):
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        store.write(i, j, h[r0:r1, c0:c1])
        assert len(store.missing()) == 14 - k
    again = new(tmp_path)
    assert again.missing() == todo[7:] and not again.complete()
    fill(again, h)
    assert again.complete() and again.missing() == []
    np.testing.assert_array_equal(again.assemble(), h)


@pytest.mark.parametrize(
    "kw", [{"config_hash": "ffff" * 10}, {"n": 24}, {"tile": 6}, {"dtype": "float32"}]
)
def test_other_config_refused(tmp_path, kw):
    new(tmp_path)
    with pytest.raises(TileStoreError, match="another config"):
        new(tmp_path, **kw)


def test_bad_folders_and_args(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(TileStoreError, match="is a file"):
        new(f)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(TileStoreError, match="not empty"):
        new(tmp_path / "theirs")
    with pytest.raises(TileStoreError, match="n must be"):
        new(tmp_path / "a", n=0)
    with pytest.raises(TileStoreError, match="tile must"):
        new(tmp_path / "a", tile=0)
    with pytest.raises(TileStoreError, match="no manifest"):
        TileStore.open(tmp_path / "nowhere")
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "manifest.json").write_text("{not json")
    with pytest.raises(TileStoreError, match="manifest"):
        TileStore.open(tmp_path / "garbled")


def flip_a_byte(f: Path) -> Path:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return f


def test_corrupt_tile(full):
    store, h = full
    f = flip_a_byte(store.path / "tiles" / "t_1_3.arrow")
    with pytest.raises(TileStoreError, match="t_1_3.arrow"):
        store.read(1, 3)
    done, corrupt = store.verify()
    assert corrupt == [(1, 3)] and len(done) == 14 and not f.exists()
    assert store.missing() == [(1, 3)]
    with pytest.raises(TileStoreError, match="1 of 15 tiles missing"):
        store.assemble()
    with pytest.raises(TileStoreError, match="1 of 15"):
        TileStore.open(store.path).matvec(np.ones(N))


def unlist(store: TileStore, key: str) -> None:
    path = store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["tiles"][key]
    path.write_text(json.dumps(manifest))


def test_unlisted_files(full):
    store, _ = full
    tiles = store.path / "tiles"
    unlist(store, "0_0")  # a kill between the tile rename and the manifest update
    unlist(store, "2_2")
    (tiles / "t_2_2.arrow").write_bytes(b"garbage")
    unlist(store, "4_4")
    (tiles / "t_4_4.arrow").write_bytes((tiles / "t_0_1.arrow").read_bytes())  # 5x5, not 3x3
    stray = tiles / ".t_0_0.arrow.xxx.tmp"
    stray.write_bytes(b"partial")
    outside = tiles / "t_9_9.arrow"
    outside.write_bytes(b"junk")
    reopened = new(store.path)
    assert reopened.missing() == [(2, 2), (4, 4)]
    assert "0_0" in json.loads((store.path / "manifest.json").read_text())["tiles"]
    np.testing.assert_array_equal(reopened.read(0, 0), store.read(0, 0))
    gone = [stray, outside, tiles / "t_2_2.arrow", tiles / "t_4_4.arrow"]
    assert not any(f.exists() for f in gone)


def test_write_checks(tmp_path):
    store = new(tmp_path)
    with pytest.raises(TileStoreError, match=r"tile \(0, 4\): tile must be \(5, 3\)"):
        store.write(0, 4, np.zeros((5, 5)))
    with pytest.raises(TileStoreError, match="below the diagonal"):
        store.write(1, 0, np.zeros((5, 5)))
    with pytest.raises(TileStoreError, match="not stored"):
        store.read(0, 0)
    assert store.missing() == store.all_tiles()


def test_float32(tmp_path):
    h = sym(N)
    store = new(tmp_path, dtype="float32")
    fill(store, h)
    g = load_gram(tmp_path)
    assert g.dtype == np.float32
    np.testing.assert_array_equal(g, h.astype(np.float32))
    r = store.matvec(np.ones(N))
    assert r.dtype == np.float64
    # float32 products, float64 sums: float32 accuracy, as the stored tiles have.
    np.testing.assert_allclose(r, h.astype(np.float32).astype(np.float64).sum(1), rtol=0,
                               atol=1e-6 * np.abs(h).sum(1).max())


def test_matvec_checks_each_tile_before_mapping_it(full):
    store, h = full
    flip_a_byte(store.path / "tiles" / "t_0_2.arrow")
    with pytest.raises(TileStoreError, match="t_0_2.arrow fails its checksum"):
        TileStore.open(store.path).matvec(np.ones(N))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 30), tile=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_round_trip_property(n, tile, seed):
    h = sym(n, seed)
    with tempfile.TemporaryDirectory() as d:
        store = TileStore.create_or_open(d, config_hash="h", n=n, tile=tile)
        fill(store, h)
        assert store.complete()
        np.testing.assert_array_equal(load_gram(d), h)


def journal_lines(store: TileStore) -> list[str]:
    return (store.path / JOURNAL).read_text().splitlines()


def test_a_write_appends_one_journal_line_and_compaction_folds_them(tmp_path):
    h = sym(N)
    store = new(tmp_path)
    manifest = (tmp_path / "manifest.json").read_text()
    for k, (i, j) in enumerate(store.all_tiles()[:4], 1):
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        store.write(i, j, h[r0:r1, c0:c1], seconds=0.5, flops=100)
        assert len(journal_lines(store)) == k  # O(1) per tile: manifest.json is not rewritten
        assert (tmp_path / "manifest.json").read_text() == manifest
    assert json.loads(journal_lines(store)[0])["key"] == "0_0"
    assert TileStore.open(tmp_path).listed() == store.all_tiles()[:4]
    store.compact()
    assert not (tmp_path / JOURNAL).exists()
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert list(m["tiles"]) == ["0_0", "0_1", "0_2", "0_3"]
    assert m["tiles"]["0_1"]["seconds"] == 0.5 and m["tiles"]["0_1"]["flops"] == 100
    assert TileStore.open(tmp_path).work() == (4, 2.0, 400)


def test_resume_after_appends_reads_the_journal_and_compacts_it(tmp_path):
    h = sym(N)
    store = new(tmp_path)
    for i, j in store.all_tiles()[:6]:  # a job killed after 6 tiles: all in the journal
        (r0, r1), (c0, c1) = store.bounds(i), store.bounds(j)
        store.write(i, j, h[r0:r1, c0:c1], seconds=1.0, flops=7)
    again = new(tmp_path)
    assert again.missing() == store.all_tiles()[6:]
    assert not (tmp_path / JOURNAL).exists()  # verify folded it into manifest.json
    assert len(json.loads((tmp_path / "manifest.json").read_text())["tiles"]) == 6
    for i, j in again.missing():
        (r0, r1), (c0, c1) = again.bounds(i), again.bounds(j)
        again.write(i, j, h[r0:r1, c0:c1])
    assert TileStore.open(tmp_path).complete()  # the manifest plus the new journal
    np.testing.assert_array_equal(load_gram(tmp_path), h)
    assert again.work() == (6, 6.0, 42)  # the later tiles were written without a cost


def test_torn_last_journal_line_is_ignored(tmp_path):
    h = sym(N)
    store = new(tmp_path)
    fill(store, h)
    journal = tmp_path / JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # killed mid-append of 4_4
    reader = TileStore.open(tmp_path)
    assert reader.listed() == store.all_tiles()[:-1] and not reader.complete()
    # Its tile file is whole, so resuming adopts it: nothing is lost but its cost.
    reopened = new(tmp_path)
    assert reopened.missing() == [] and not journal.exists()
    np.testing.assert_array_equal(reopened.assemble(), h)


def test_garbled_journal_lines_lose_only_their_tiles(tmp_path):
    h = sym(N)
    store = new(tmp_path)
    fill(store, h)
    journal = tmp_path / JOURNAL
    lines = journal.read_text().splitlines(keepends=True)
    lines[2] = "{garbled\n"
    lines[3] = "[1, 2]\n"
    journal.write_text("".join(lines))
    (tmp_path / "tiles" / "t_0_2.arrow").unlink()  # listed by no line: gone for good
    reopened = new(tmp_path)
    assert reopened.missing() == [(0, 2)]  # 0_3 is adopted from its file


def test_a_crash_between_compaction_and_journal_removal_replays_alike(tmp_path):
    h = sym(N)
    store = new(tmp_path)
    fill(store, h)
    kept = (tmp_path / JOURNAL).read_bytes()
    store.compact()
    (tmp_path / JOURNAL).write_bytes(kept)  # the journal outlived its compaction
    assert TileStore.open(tmp_path).listed() == store.all_tiles()
    np.testing.assert_array_equal(new(tmp_path).assemble(), h)


def test_a_staged_tile_is_committed_whole_and_reads_back(tmp_path):
    """Another process (a Ray actor on this host) stages a tile beside its target; the store
    renames it into place and journals it with the writer's checksum, which a reopened store
    checks."""
    h = sym(N)
    store = new(tmp_path / "g", dtype="float32")
    target = store.target(1, 3)
    staged = stage_tile(target, h[5:10, 15:20])
    tmp = Path(staged.tmp)
    assert tmp.parent == store.path.resolve() / "tiles" and tmp.name.startswith(".t_1_3.arrow.")
    assert not (store.path / "tiles" / "t_1_3.arrow").exists()
    store.commit(1, 3, staged, seconds=0.5, flops=7)
    assert not tmp.exists()
    np.testing.assert_array_equal(store.read(1, 3), h[5:10, 15:20].astype(np.float32))
    reopened = new(store.path, dtype="float32")
    assert reopened.missing() == [t for t in reopened.all_tiles() if t != (1, 3)]
    assert reopened.work() == (1, 0.5, 7)


def test_a_staged_tiles_checksum_is_its_files_hashed_beside_the_write(tmp_path):
    """The checksum is taken on another thread while the file is written, in pieces (schema,
    body, footer): it must be the file's own sha256 for a tile of many megabytes and for one
    of a single entry."""
    for n, tile in ((1200, 1200), (1, 1)):
        store = TileStore.create_or_open(tmp_path / f"g{n}", config_hash="c" * 48, n=n,
                                         tile=tile)
        block = np.random.default_rng(n).standard_normal((n, n))
        staged = stage_tile(store.target(0, 0), block)
        data = Path(staged.tmp).read_bytes()
        assert staged.sha256 == hashlib.sha256(data).hexdigest()
        assert staged.bytes == len(data) > block.nbytes


def test_staging_checks_and_what_a_commit_refuses(tmp_path):
    store = new(tmp_path / "g")
    with pytest.raises(ValueError, match=r"must be \(5, 3\)"):
        stage_tile(store.target(0, 4), np.zeros((5, 5)))
    with pytest.raises(TileStoreError, match="below the diagonal"):
        store.target(2, 1)
    unreachable = store.target(0, 4, reachable=False)  # the writer hands the array back
    back = stage_tile(unreachable, np.ones((5, 3), dtype=np.float32))
    assert isinstance(back, np.ndarray) and back.dtype == np.float64
    staged = stage_tile(store.target(0, 0), np.ones((5, 5)))
    Path(staged.tmp).write_bytes(b"torn")  # not the whole file the writer reported
    with pytest.raises(TileStoreError, match="not a whole file"):
        store.commit(0, 0, staged)
    assert store.missing() == store.all_tiles()
    assert not any((store.path / "tiles").iterdir())  # the stray staged file went too


def test_a_finished_job_removes_stray_staged_files(tmp_path):
    store = new(tmp_path / "g")
    kept = stage_tile(store.target(0, 1), np.ones((5, 5)))
    stray = stage_tile(store.target(0, 2), np.ones((5, 5)))  # a writer killed after staging
    store.commit(0, 1, kept)
    store.remove_temporaries()
    assert not Path(stray.tmp).exists()
    assert sorted(f.name for f in (store.path / "tiles").iterdir()) == ["t_0_1.arrow"]
