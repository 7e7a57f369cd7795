"""The compact shard index (``lensforge data index``): same samples as today's reader, layout and size,
missing / stale / damaged cases, the validate-time machine check, the lazy epoch order."""

from __future__ import annotations

import pickle
import shutil
import textwrap

import numpy as np
import pytest

from _reference_wds import ReferenceTarSource
from _shard_sets import plain_set, tricky_set, write_tar
from lensforge.cli import main
from lensforge.data.index import ROW, ShardIndex, default_index_path, select_names
from lensforge.data.loader import FeistelOrder
from lensforge.data.remote import expand_braces
from lensforge.data.sources.webdataset import WebDatasetSource
from lensforge.errors import LensforgeError
from lensforge.interfaces import SampleError


def _outcome(fn):
    try:
        return fn()
    except SampleError as e:
        return ("SampleError", type(e).__name__)


def test_index_gives_the_same_samples_captions_and_sizes_as_todays_reader(tmp_path, capsys, caplog):
    root = tricky_set(tmp_path / "set")
    assert main(["data", "index", str(root), "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"indexed 25 samples in 2 shards into {root / 'lensforge.index'}" in out
    assert "1 keys without an image member" in out and "damaged" not in out
    ref = ReferenceTarSource(str(root))
    with caplog.at_level("WARNING", logger="lensforge.data"):
        new = WebDatasetSource(WebDatasetSource.Config(path=str(root)))
    assert not caplog.records  # the index was found and is current
    assert len(new) == len(ref) == 25
    for i in range(len(ref)):
        a = _outcome(lambda: ref.raw(i))
        b = _outcome(lambda: new.raw(i))
        if isinstance(a, tuple):
            assert a == b, i
        else:
            assert (a.key, a.ext, a.image, a.captions, a.meta) == (b.key, b.ext, b.image, b.captions, b.meta), i
        assert _outcome(lambda: ref.native_size(i)) == _outcome(lambda: new.native_size(i)), i
        sa = _outcome(lambda: ref.get(i, (24, 40)))
        sb = _outcome(lambda: new.get(i, (24, 40)))
        if isinstance(sa, tuple):
            assert sa == sb, i
        else:
            assert (sa.key, sa.captions, sa.meta) == (sb.key, sb.captions, sb.meta)
            assert np.array_equal(sa.image.numpy(), sb.image.numpy())
    keys = [new.raw(i).key for i in range(len(new)) if not isinstance(_outcome(lambda: new.raw(i)), tuple)]
    assert "l" * 120 in keys and "dir.with.dot/x" in keys and "noimage" not in keys


def test_index_file_is_16_bytes_a_sample_mapped_and_not_pickled(tmp_path):
    root = plain_set(tmp_path / "set", shards=3, per_shard=40)
    assert main(["data", "index", str(root), "--no-progress"]) == 0
    idx_file = root / "lensforge.index"
    idx = ShardIndex(str(idx_file))
    assert ROW.itemsize == 16 and len(idx) == 120
    assert idx_file.stat().st_size - (64 + 16 * 120) < 1024  # the footer: shard names, sizes, stamps
    src = WebDatasetSource(WebDatasetSource.Config(path=str(root)))
    src.native_size(5)
    assert isinstance(src.index.index.rows, np.memmap)  # mapped, not read: shared by workers through the page cache
    blob = pickle.dumps(src)
    assert len(blob) < 4096  # what a spawned worker receives: no rows
    again = pickle.loads(blob)
    assert again.raw(77).key == src.raw(77).key == "k00077"


def test_missing_stale_and_damaged(tmp_path, capsys):
    root = plain_set(tmp_path / "set", shards=3, per_shard=5)
    cfg = WebDatasetSource.Config(path=str(root), auto_index=2)
    with pytest.raises(LensforgeError, match=r"no index at .*lensforge\.index' for the 3 shards .*`lensforge data index "):
        WebDatasetSource(cfg)
    assert main(["data", "stats", str(root), "--no-plots", "--no-progress"]) == 0  # small sets: indexed at start-up
    capsys.readouterr()
    assert (root / "lensforge.index").is_file()  # ... and written for the next start
    plain_set(tmp_path / "more", shards=1, per_shard=7, start=100)
    shutil.copy(tmp_path / "more" / "shard-0000.tar", root / "shard-0001.tar")  # a shard replaced after indexing
    with pytest.raises(LensforgeError, match=r"is stale: 'shard-0001.tar' is \d+ bytes, the index was built when"):
        WebDatasetSource(cfg)
    assert len(WebDatasetSource(WebDatasetSource.Config(path=str(root), verify_index=False))) == 15  # trusted as is
    # damaged shards: one is not a tar, one is cut in the middle of a member; never fatal
    (root / "shard-0003.tar").write_bytes(b"this is not a tar file" * 50)
    data = (tmp_path / "more" / "shard-0000.tar").read_bytes()
    (root / "shard-0004.tar").write_bytes(data[: len(data) * 6 // 10])
    assert main(["data", "index", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 damaged shard(s)" in out and "shard-0003.tar" in out and "shard-0004.tar" in out
    src = WebDatasetSource(cfg)
    n_cut = len(src) - 5 - 7 - 5
    assert 0 < n_cut < 7  # the complete samples before the cut are kept
    assert [src.raw(i).key for i in range(len(src))][-n_cut:] == [f"k{100 + j:05d}" for j in range(n_cut)]
    # the CLI: a clear one-line error, exit 2
    (root / "lensforge.index").unlink()
    assert main(["data", "stats", str(root / "shard-00*.tar"), "--no-plots"]) == 0
    capsys.readouterr()
    assert main(["data", "index", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert "no .tar shards found" in err and "Traceback" not in err
    (root / "lensforge.index").write_bytes(b"garbage" * 20)
    with pytest.raises(LensforgeError, match="is not a lensforge index"):
        WebDatasetSource(cfg)


def test_one_index_serves_a_glob_a_brace_pattern_and_a_single_shard(tmp_path):
    root = plain_set(tmp_path / "set", shards=4, per_shard=3)
    assert main(["data", "index", str(root), "--no-progress"]) == 0
    for path, keys in ((root / "shard-0002.tar", [6, 7, 8]), (f"{root}/shard-000[13].tar", [3, 4, 5, 9, 10, 11]),
                       (f"{root}/shard-{{0000..0001}}.tar", [0, 1, 2, 3, 4, 5])):
        for verify in (True, False):
            src = WebDatasetSource(WebDatasetSource.Config(path=str(path), auto_index=0, verify_index=verify))
            assert [src.raw(i).key for i in range(len(src))] == [f"k{k:05d}" for k in keys]
    (tmp_path / "unlisted").mkdir()  # an index whose shards cannot be listed: say how to trust it
    shutil.copy(root / "lensforge.index", tmp_path / "unlisted")
    with pytest.raises(LensforgeError, match="names 4\\); if the store cannot be listed, set data.source.verify_index=false"):
        WebDatasetSource(WebDatasetSource.Config(path=str(tmp_path / "unlisted")))
    assert default_index_path(f"{root}/shard-*.tar") == str(root / "lensforge.index")
    assert default_index_path("s3://b/p/") == "s3://b/p/lensforge.index"
    assert default_index_path("https://example.org/d/shard-{000..009}.tar") == "https://example.org/d/lensforge.index"
    assert select_names(["x.tar", "y.tar", "sub/x2.tar"], "s3://b/p/a/x*.tar") == [0]
    assert select_names(["x.tar", "y.tar", "sub/x2.tar"], "s3://b/p/a/**/x*.tar") == [2]
    assert expand_braces("s-{08..11}-{a,b}.tar") == ["s-08-a.tar", "s-08-b.tar", "s-09-a.tar", "s-09-b.tar",
                                                    "s-10-a.tar", "s-10-b.tar", "s-11-a.tar", "s-11-b.tar"]


def _recipe(tmp_path, source: str) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(f"""
        stage: {{name: fake_stage}}
        model:
          dit: {{name: fake_dit, in_channels: 12, text_dims: [16]}}
          vae: {{name: fake_vae, factor: 2}}
          text_encoder: {{name: fake_text, dim: 16}}
        data: {{source: {source}}}
    """))
    return str(p)


def test_validate_checks_that_the_index_exists_unless_portable(tmp_path, fakes, capsys):
    root = plain_set(tmp_path / "set", shards=3, per_shard=2)
    r = _recipe(tmp_path, f"{{name: webdataset, path: {root}, auto_index: 2}}")
    assert main(["validate", r]) == 2
    err = capsys.readouterr().err
    assert "data.source.index: no index at" in err and f"lensforge data index {root}" in err and "Traceback" not in err
    assert main(["validate", "--portable", "-q", r]) == 0
    assert main(["data", "index", str(root), "--no-progress"]) == 0
    assert main(["validate", "-q", r]) == 0
    capsys.readouterr()
    # streaming needs shards, not an index; a small set is indexed at start-up
    assert main(["validate", "-q", _recipe(tmp_path, f"{{name: webdataset, path: {tmp_path}/x, mode: streaming}}")]) == 2
    assert "no .tar shards found" in capsys.readouterr().err
    other = str(tmp_path / "elsewhere.index")
    assert WebDatasetSource.check_environment(WebDatasetSource.Config(path=str(root), index=other, auto_index=0)) == [
        ("index", f"no index at '{other}' for the 3 shards at '{root}': build it once with `lensforge data index {root}`")]
    assert WebDatasetSource.check_environment(WebDatasetSource.Config(path=str(root), index=other)) == []  # small: built at start-up


def test_epoch_order_large_sets_use_a_lazy_permutation():
    for n in (1, 2, 7, 1000, 4099):
        order = FeistelOrder(n, (3, 1, 0x5EED))
        got = [order[i] for i in range(n)]
        assert sorted(got) == list(range(n))  # a permutation ...
        assert got == [FeistelOrder(n, (3, 1, 0x5EED))[i] for i in range(n)]  # ... deterministic per key
        assert list(order[2::3]) == got[2::3] and len(order[1::4]) == len(got[1::4])
    assert [FeistelOrder(1000, (3, 2, 0x5EED))[i] for i in range(50)] != got[:50]
    # small sets keep numpy's permutation (the order the loader always had), as uint32
    from lensforge.data.config import DataConfig
    from lensforge.data.loader import PackedStream
    from lensforge.data.shards import open_source

    stream = PackedStream(open_source("synthetic:300"), DataConfig(), downsample=16, seed=4)
    order = stream.epoch_order(2)
    assert order.dtype == np.uint32
    assert np.array_equal(order, np.random.default_rng([4, 2, 0x5EED]).permutation(300))


def test_unreachable_remote_paths_are_one_line_errors(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    url = f"http://127.0.0.1:{port}/shards/"
    with pytest.raises(LensforgeError, match=f"cannot reach '{url}lensforge.index'"):
        WebDatasetSource(WebDatasetSource.Config(path=url))
    assert main(["data", "index", url, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot list" in err[0] and "Traceback" not in err[0]
    assert WebDatasetSource.check_environment(WebDatasetSource.Config(path=url))[0][1].startswith("cannot reach")
