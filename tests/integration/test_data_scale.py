"""Data at scale: the indexed reader gives today's batches, ranks × workers split indexed and streamed data
without overlap, streaming resumes exactly after ``kill -9``, remote shards from a real S3-compatible server
and from plain HTTP servers on 127.0.0.1, damaged shards and members skipped and counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from _reference_wds import ReferenceTarSource
from _shard_sets import caption_json, cfg, plain_set, png, signature, tricky_set, write_tar
from lensforge.cli import main
from lensforge.data import build_loader
from lensforge.data.sources.webdataset import WebDatasetSource

REPO = Path(__file__).resolve().parents[2]


def take(loader, k: int) -> list[tuple]:
    out = []
    for b in loader:
        out.append(signature(b))
        if len(out) == k:
            break
    return out


def keys_of(loader) -> list[str]:
    return [k for b in loader for k in b.keys]


@pytest.mark.parametrize("workers", [0, 2])
def test_indexed_loader_gives_todays_batches(tmp_path, workers):
    root = tricky_set(tmp_path / "set")
    assert main(["data", "index", str(root), "--no-progress"]) == 0
    c = cfg({"name": "webdataset", "path": str(root)}, workers, repeat=False)
    new = build_loader(c, downsample=8, seed=11, source=WebDatasetSource(WebDatasetSource.Config(path=str(root))))
    ref = build_loader(c, downsample=8, seed=11, source=ReferenceTarSource(str(root)))
    a, b = take(new, 1000), take(ref, 1000)
    assert a == b and sum(len(s[0]) for s in a) == 23  # 25 samples, 2 unreadable (corrupt image, latin-1 caption)
    assert new.skipped == ref.skipped == 2
    c = cfg({"name": "webdataset", "path": str(root)}, workers, repeat=True)  # and across epochs
    assert take(build_loader(c, downsample=8, seed=2), 30) == take(
        build_loader(c, downsample=8, seed=2, source=ReferenceTarSource(str(root))), 30)


@pytest.mark.parametrize("mode", ["indexed", "streaming"])
def test_two_ranks_two_workers_disjoint_and_covering(tmp_path, mode):
    root = plain_set(tmp_path / "set", shards=6, per_shard=7)
    c = cfg({"name": "webdataset", "path": str(root), "mode": mode, "shuffle_buffer": 5}, workers=2, repeat=False)
    per_rank = [keys_of(build_loader(c, downsample=8, seed=1, rank=r, world_size=2)) for r in range(2)]
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)) == 42 and all(per_rank)
    assert set(seen) == {f"k{k:05d}" for k in range(42)}
    if mode == "streaming":  # whole shards per reader: a shard's keys all go to one rank
        shard_of = {f"k{k:05d}": k // 7 for k in range(42)}
        assert {shard_of[k] for k in per_rank[0]}.isdisjoint({shard_of[k] for k in per_rank[1]})


_CHILD = textwrap.dedent("""
    import os, sys, time, torch
    from lensforge.data import build_loader
    from _shard_sets import cfg, signature
    c = cfg({{"name": "webdataset", "path": {root!r}, "mode": "streaming", "shuffle_buffer": 9}}, workers=2)
    loader = build_loader(c, downsample=8, seed=7)
    sigs = []
    for b in loader:
        sigs.append(signature(b))
        tmp = {ckpt!r} + ".tmp"
        torch.save({{"sigs": sigs, "state": loader.state_dict()}}, tmp)
        os.replace(tmp, {ckpt!r})
        time.sleep(0.02)
""")


def test_streaming_resumes_exactly_after_kill_9(tmp_path):
    root = plain_set(tmp_path / "set", shards=5, per_shard=9)
    ckpt = tmp_path / "ckpt.pt"
    script = _CHILD.format(root=str(root), ckpt=str(ckpt))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while True:  # let it run past a few shard boundaries, then kill it without warning
            if ckpt.exists() and len(torch.load(ckpt, weights_only=False)["sigs"]) >= 8:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its two workers: kill -9
        proc.wait()
    saved = torch.load(ckpt, weights_only=False)
    head = saved["sigs"]
    c = cfg({"name": "webdataset", "path": str(root), "mode": "streaming", "shuffle_buffer": 9}, workers=2)
    resumed = build_loader(c, downsample=8, seed=7)
    resumed.load_state_dict(saved["state"])
    rest = take(resumed, 25)
    full = take(build_loader(c, downsample=8, seed=7), len(head) + 25)
    assert head + rest == full  # the same batches, crossing shard and epoch ends (45 samples an epoch)


@pytest.fixture
def remote_set(tmp_path):
    root = plain_set(tmp_path / "www" / "set", shards=5, per_shard=6)
    assert main(["data", "index", str(root), "--no-progress"]) == 0
    return tmp_path / "www", root


def test_remote_shards_from_an_s3_server(remote_set, tmp_path, capsys):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from lensforge.testing.object_store import S3Server

    www, root = remote_set
    local = cfg({"name": "webdataset", "path": str(root)}, workers=2)
    expected = take(build_loader(local, downsample=8, seed=3), 12)
    with S3Server() as s3:
        url = s3.upload_folder(root, "bucket/set")
        so = s3.storage_options
        remote = cfg({"name": "webdataset", "path": url, "storage_options": so, "cache_dir": str(tmp_path / "cache"),
                      "readahead": 5}, workers=2)
        assert take(build_loader(remote, downsample=8, seed=3), 12) == expected  # same index, same batches
        # the index built from the store itself, written back to it
        opts = [f"-o{k}={v}" for k, v in so.items() if k != "client_kwargs"] + ["-oclient_kwargs={region_name: us-west-2}"]
        assert main(["data", "index", url, "--out", url + "again.index", "--workers", "2", "--no-progress", *opts]) == 0
        assert "indexed 30 samples in 5 shards" in capsys.readouterr().out
        again = WebDatasetSource(WebDatasetSource.Config(path=url, index=url + "again.index", storage_options=so,
                                                         cache_dir=str(tmp_path / "cache")))
        ref = WebDatasetSource(WebDatasetSource.Config(path=str(root)))
        assert [again.raw(i).captions for i in range(30)] == [ref.raw(i).captions for i in range(30)]
        streamed = cfg({"name": "webdataset", "path": url, "mode": "streaming", "storage_options": so}, workers=2,
                       repeat=False)
        assert sorted(keys_of(build_loader(streamed, downsample=8, seed=3))) == [f"k{k:05d}" for k in range(30)]
        with pytest.raises(Exception, match="no .tar shards found at 's3://bucket/nothing/'"):
            WebDatasetSource(WebDatasetSource.Config(path="s3://bucket/nothing/", storage_options=so))


def test_remote_shards_from_plain_http_servers(remote_set, tmp_path, caplog):
    from lensforge.testing.object_store import HttpFileServer

    www, root = remote_set
    local = cfg({"name": "webdataset", "path": str(root)}, workers=2)
    expected = take(build_loader(local, downsample=8, seed=5), 10)
    with HttpFileServer(www, ranges=True) as h:  # http.server + Range: ranged reads, one GET per sample
        c = cfg({"name": "webdataset", "path": f"{h.url}/set/", "cache_dir": str(tmp_path / "cache")}, workers=2)
        assert take(build_loader(c, downsample=8, seed=5), 10) == expected
        braces = cfg({"name": "webdataset", "path": f"{h.url}/set/shard-{{0000..0004}}.tar", "mode": "streaming"},
                     workers=2, repeat=False)
        assert sorted(keys_of(build_loader(braces, downsample=8, seed=5))) == [f"k{k:05d}" for k in range(30)]
    with HttpFileServer(www, ranges=False) as h:  # the standard library's SimpleHTTPRequestHandler: no Range
        streamed = cfg({"name": "webdataset", "path": f"{h.url}/set/", "mode": "streaming"}, workers=0, repeat=False)
        assert sorted(keys_of(build_loader(streamed, downsample=8, seed=5))) == [f"k{k:05d}" for k in range(30)]
        with caplog.at_level("WARNING", logger="lensforge.data"):
            src = WebDatasetSource(WebDatasetSource.Config(path=f"{h.url}/set/", cache_dir=str(tmp_path / "cache")))
            assert [src.raw(i).key for i in (0, 17, 29)] == ["k00000", "k00017", "k00029"]  # works, slowly
        assert "ignores HTTP Range requests" in caplog.text and "mode=streaming" in caplog.text


@pytest.mark.parametrize("mode", ["indexed", "streaming"])
def test_damaged_shard_and_member_are_skipped_and_counted(tmp_path, mode):
    root = plain_set(tmp_path / "set", shards=4, per_shard=6)
    import tarfile

    with tarfile.open(root / "shard-0001.tar") as tf:
        cut_at = tf.getmember("k00009.png").offset_data + 100
    data = (root / "shard-0001.tar").read_bytes()
    (root / "shard-0001.tar").write_bytes(data[:cut_at])  # cut inside the 4th sample's image
    members = []
    for k in range(18, 24):  # shard 3: one member's image is garbage
        members += [(f"k{k:05d}.png", png(24, 40, k) if k != 20 else b"\x89PNG\r\n\x1a\n" + os.urandom(300)),
                    (f"k{k:05d}.json", caption_json(k))]
    write_tar(root / "shard-0003.tar", members)
    if mode == "indexed":
        assert main(["data", "index", str(root), "--no-progress"]) == 0
    c = cfg({"name": "webdataset", "path": str(root), "mode": mode, "shuffle_buffer": 4}, workers=2, repeat=False)
    loader = build_loader(c, downsample=8, seed=0)
    keys = keys_of(loader)
    # the samples before the damage are read, the one it cuts and those after it are not; k00020 is garbage
    assert sorted(keys) == [f"k{k:05d}" for k in [*range(9), *range(12, 24)] if k != 20]
    # streaming counts the damaged shard once when it hits the damage; the index left the cut sample out
    assert loader.skipped == (2 if mode == "streaming" else 1)
