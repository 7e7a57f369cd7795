"""Image-folder and WebDataset sources, shard building, ``lensforge data stats``, validate-time checks."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lensforge.cli import main
from lensforge.data.shards import build_shards, open_source
from lensforge.data.sources.folder import ImageFolderSource
from lensforge.data.sources.webdataset import WebDatasetSource
from lensforge.errors import Problem
from lensforge.interfaces import SampleError
from lensforge.recipe.plugin_config import validate_plugin_node


def make_folder(root: Path, n: int = 10, corrupt: tuple[int, ...] = (3,)) -> Path:
    """``n`` small images of several sizes/formats with .txt or .json captions; some corrupt."""
    rng = np.random.default_rng(0)
    sizes = [(40, 80), (64, 64), (90, 50), (48, 72), (100, 60)]
    exts = ["png", "jpg", "webp", "png"]
    for i in range(n):
        sub = root / ("sub" if i % 4 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = sizes[i % len(sizes)]
        ext = exts[i % len(exts)]
        p = sub / f"img.{i:03d}.{ext}"  # a dot inside the name: shard keys must cope
        if i in corrupt:
            p.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200) if i % 2 else rng.bytes(300))
        else:
            arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(p, quality=90) if ext != "png" else Image.fromarray(arr).save(p)
        stem = p.with_suffix("")
        words = " ".join(["word"] * (5 + 17 * i))
        if i % 2:
            stem.with_name(stem.name + ".json").write_text(json.dumps({"dense": words, "short": "img", "url": "u"}))
        else:
            stem.with_name(stem.name + ".txt").write_text(words)
    return root


def test_folder_source(tmp_path):
    src = ImageFolderSource(ImageFolderSource.Config(path=str(make_folder(tmp_path / "f"))))
    assert len(src) == 10
    idx = {src.key(i): i for i in range(len(src))}
    s = src.get(idx["img.001"], (32, 48))
    assert s.image.shape == (3, 32, 48) and -1 <= s.image.min() and s.image.max() <= 1
    assert set(s.captions) == {"dense", "short"} and s.meta["url"] == "u"
    assert src.get(idx["sub/img.000"], (16, 16)).captions == {"caption": " ".join(["word"] * 5)}
    assert src.native_size(idx["img.001"]) == (64, 64)
    with pytest.raises(SampleError):
        src.get(idx["img.003"], (32, 32))


def test_shards_roundtrip_same_samples(tmp_path):
    folder = ImageFolderSource(ImageFolderSource.Config(path=str(make_folder(tmp_path / "f"))))
    res = build_shards(folder, tmp_path / "shards", samples_per_shard=4, progress=False)
    assert len(res["shards"]) == 3 and res["samples"] == 10 and res["no_header"] == 1
    wds = WebDatasetSource(WebDatasetSource.Config(path=str(tmp_path / "shards")))
    assert len(wds) == 10
    for i in range(10):
        if folder.key(i) == "img.003":
            with pytest.raises(SampleError):
                wds.get(i, (32, 32))
            continue
        a, b = folder.get(i, (32, 48)), wds.get(i, (32, 48))
        assert a.captions == b.captions
        assert np.array_equal(a.image.numpy(), b.image.numpy())  # bytes copied unchanged
        assert "." not in b.key.rsplit("/", 1)[-1]
    assert wds.raw(0).captions == folder.raw(0).captions and wds.raw(0).image == folder.raw(0).image


def _stats_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if not ln.startswith("data stats of") and not ln.startswith("plots:")]


def test_stats_same_counts_on_folder_and_its_shards(tmp_path, capsys):
    folder = make_folder(tmp_path / "f", n=12, corrupt=(3, 8))
    assert main(["data", "build-shards", str(folder), str(tmp_path / "sh"), "--samples-per-shard", "5", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["data", "stats", str(folder), "--out", str(tmp_path / "p1"), "--no-progress"]) == 0
    a = capsys.readouterr().out
    assert main(["data", "stats", str(tmp_path / "sh"), "--out", str(tmp_path / "p2"), "--no-progress"]) == 0
    b = capsys.readouterr().out
    assert "samples: 12" in a and "unreadable: 2" in a and "caption length in words (dense)" in a
    assert _stats_lines(a) == _stats_lines(b)
    for name in ("caption_lengths.png", "resolutions.png", "aspect_ratios.png"):
        assert (tmp_path / "p1" / name).stat().st_size > 1000
        assert Image.open(tmp_path / "p2" / name).size[0] > 100


def test_open_source_and_missing_paths(tmp_path, capsys):
    assert len(open_source("synthetic:7")) == 7
    assert main(["data", "stats", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # dataset paths are machine checks (fit's preflight, Recipe.environment_problems), not schema checks
    assert ImageFolderSource.check_environment(ImageFolderSource.Config(path=str(tmp_path / "nope"))) == [
        ("path", f"image folder '{tmp_path / 'nope'}' does not exist")]
    assert "no .tar shards" in WebDatasetSource.check_environment(WebDatasetSource.Config(path=str(tmp_path / "x*.tar")))[0][1]
    problems: list[Problem] = []
    validate_plugin_node("data", {"name": "folder", "path": "x", "resize": "stretch"}, "data.source", problems, lambda k: "r.yaml")
    assert [p.key for p in problems] == ["data.source.resize"]


def test_missing_dataset_path_is_reported_before_training(tmp_path, fakes):
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(f"""
        stage: {{name: fake_stage}}
        model:
          dit: {{name: fake_dit, in_channels: 12, text_dims: [16]}}
          vae: {{name: fake_vae, factor: 2}}
          text_encoder: {{name: fake_text, dim: 16}}
        data: {{source: {{name: webdataset, path: {tmp_path}/missing}}}}
    """))
    from lensforge.recipe import load_recipe

    recipe = load_recipe(p)  # validates: the path may exist on the training machine only
    assert recipe.environment_problems() == [f"data.source.path: no .tar shards found at '{tmp_path}/missing'"]


def test_shard_index_is_reused_and_refreshed(tmp_path, caplog):
    folder = ImageFolderSource(ImageFolderSource.Config(path=str(make_folder(tmp_path / "f", n=6, corrupt=()))))
    res = build_shards(folder, tmp_path / "sh", samples_per_shard=10, progress=False)
    index = tmp_path / "sh" / "lensforge.index"
    assert res["index"] == str(index) and index.is_file()  # written by build-shards, beside the shards
    tar = tmp_path / "sh" / "shard-000000.tar"
    with caplog.at_level("WARNING", logger="lensforge.data"):
        a = WebDatasetSource(WebDatasetSource.Config(path=str(tar)))  # one shard of the folder: its index serves
        b = WebDatasetSource(WebDatasetSource.Config(path=str(tmp_path / "sh")))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING] and len(a) == len(b) == 6
    assert np.array_equal(a.get(2, (16, 16)).image.numpy(), b.get(2, (16, 16)).image.numpy())
    # the shard rewritten without its index: the stale index is noticed, and a small set is indexed again
    build_shards(ImageFolderSource(ImageFolderSource.Config(path=str(make_folder(tmp_path / "g", n=4, corrupt=())))),
                 tmp_path / "sh", samples_per_shard=10, progress=False, index=False)
    with caplog.at_level("WARNING", logger="lensforge.data"):
        assert len(WebDatasetSource(WebDatasetSource.Config(path=str(tar)))) == 4
    assert "is stale" in caplog.text and "lensforge data index" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lensforge.data"):  # ... and written, so the next start reads it
        assert len(WebDatasetSource(WebDatasetSource.Config(path=str(tar)))) == 4
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
