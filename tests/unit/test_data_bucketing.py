"""``data.packing.group_by_size``: one image size per batch (the per-size bucketing of other trainers, the
baseline arm of the resolution ablation) — nothing dropped or duplicated, and off by default."""

from __future__ import annotations

from lensforge.data import build_loader
from lensforge.data.config import CaptionPolicyConfig, DataConfig, LoaderConfig, PackingConfig, ResolutionPolicyConfig
from lensforge.data.packing import TokenBudgetPacker


def test_packer_with_a_group_key_keeps_one_group_per_batch_and_loses_nothing():
    items = [((i, "ab"[i % 3 == 0]), 10 + i % 7) for i in range(200)]
    batches = list(TokenBudgetPacker(64, 8, 24, group_key=lambda it: it[1]).pack(items))
    assert all(len({it[1] for it in b.items}) == 1 for b in batches)
    assert all(b.tokens <= 64 for b in batches)
    assert sorted(it[0] for b in batches for it in b.items) == list(range(200))
    # the oldest buffered sample always goes into the next batch (nothing waits forever)
    mixed = list(TokenBudgetPacker(64, 8, 24).pack(items))
    assert any(len({it[1] for it in b.items}) > 1 for b in mixed)


def _cfg(group: bool) -> DataConfig:
    return DataConfig(
        source={"name": "synthetic", "num_samples": 96, "max_objects": 2},
        resolution=ResolutionPolicyConfig(base_resolutions=[32, 48], aspect_ratios=["1:2", "1:1", "2:1"]),
        captions=CaptionPolicyConfig(dropout=0.0, field="short"),
        packing=PackingConfig(token_budget=256, max_samples=6, lookahead=48, group_by_size=group),
        loader=LoaderConfig(num_workers=0, repeat=False),
    )


def test_loader_group_by_size_gives_single_size_batches_over_a_whole_epoch():
    grouped = list(build_loader(_cfg(True), downsample=16, seed=0))
    assert all(len({tuple(i.shape) for i in b.images}) == 1 for b in grouped)
    assert all(b.stats["num_sizes"] == 1 for b in grouped)
    keys = [k for b in grouped for k in b.keys]
    assert len(keys) == len(set(keys)) == 96
    mixed = list(build_loader(_cfg(False), downsample=16, seed=0))
    assert max(b.stats["num_sizes"] for b in mixed) > 1
    assert sorted(k for b in mixed for k in b.keys) == sorted(keys)
