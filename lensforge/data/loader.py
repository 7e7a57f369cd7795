"""Resumable, sharded, packed loading: ``PackedStream`` → ``PackedLoader`` → ``LensDataModule``.

``PackedStream`` is an ``IterableDataset`` over a map-style source. Per epoch it permutes the indices
(deterministic per ``(seed, epoch)``), takes every ``num_shards``-th index for its shard
(``shard = rank · num_workers + worker_id``, so ranks × workers see disjoint samples that together
cover the epoch), loads each sample at the size the resolution policy draws, picks its prompt with
the caption policy (both seeded by ``(seed, epoch, index)``), and feeds the token-budget packer; each
packed batch comes out as a :class:`~lensforge.interfaces.DataBatch`.

Epochs: with ``loader.repeat`` (the default, for step-based training) epochs follow each other
forever and samples still buffered at the end of an epoch are packed together with the next
epoch's (every sample still appears exactly once per epoch); without it, one ``iter()`` is one
epoch and the last batches are flushed, possibly under-filled.

Unreadable samples (:class:`~lensforge.interfaces.SampleError` / ``OSError`` from the source) are
skipped, counted (``batch.stats["skipped"]``, ``PackedLoader.skipped``) and logged — never fatal.

Exact resume: the stream's state is ``(epoch, cursor, buffered (epoch, index) pairs, counters)``,
saved by torchdata's ``StatefulDataLoader`` per worker after every batch and restored before
iteration; buffered samples are re-loaded deterministically. Resume with the same world size and
``num_workers``. Rank and world size come from ``torch.distributed`` when it is initialised (the
trainer runs with ``use_distributed_sampler=False``).

Scale: an epoch's order is a uint32 permutation up to 16.7M samples and a per-position keyed
bijection (:class:`FeistelOrder`) above, so no worker materialises an order of hundreds of millions
of indices. A source with a ``readahead`` (remote indexed shards) is asked to ``prefetch`` the next
indices of the order in growing windows, so their reads overlap. A source in ``mode: streaming``
(shards without an index) brings a :class:`lensforge.data.streaming.ShardStream` instead (its
``stream_class()``), which splits shards, not indices, across ranks × workers.
"""

from __future__ import annotations

import copy
from collections import deque
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from lensforge.data.captions import CaptionPolicy, estimate_text_tokens
from lensforge.data.config import DataConfig, PackingConfig
from lensforge.data.packing import TokenBudgetPacker
from lensforge.data.resolution import ResolutionPolicy
from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch, DataSource, Sample, SampleError

log = logging.getLogger("lensforge.data")


@dataclass
class _Item:
    epoch: int
    index: int
    sample: Sample
    prompt: str
    field: str
    bucket: str
    img_tokens: int
    txt_tokens: int


def size_key(item: _Item) -> tuple[int, int]:
    """The ``(H, W)`` of a packed item: its group under ``data.packing.group_by_size``."""
    return tuple(item.sample.image.shape[-2:])


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (:func:`lensforge.distributed.env.rank_world`)."""
    from lensforge.distributed.env import rank_world

    return rank_world()


class PackedStream(IterableDataset):
    """Sharded, packed, resumable stream of :class:`DataBatch` (see the module docstring)."""

    def __init__(self, source: DataSource, config: DataConfig, *, downsample: int, seed: int,
                 rank: int = 0, world_size: int = 1, start_epoch: int = 0):
        if downsample < 1:
            raise LensforgeError(f"downsample must be >= 1, got {downsample}")
        if not 0 <= rank < world_size:
            raise LensforgeError(f"rank {rank} is outside world size {world_size}")
        self.source = source
        self.config = config
        self.downsample = int(downsample)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.captions = CaptionPolicy(config.captions)
        self.resolution = ResolutionPolicy(config.resolution, downsample=self.downsample)
        self.packing: PackingConfig = config.packing
        max_img = self.resolution.max_tokens(self.downsample)
        if max_img + self.packing.text_tokens_min > self.packing.token_budget:
            raise LensforgeError(
                f"data.packing.token_budget={self.packing.token_budget} cannot hold the largest bucket "
                f"({max_img} image tokens + text); raise the budget or lower data.resolution.base_resolutions"
            )
        self._state: dict[str, Any] | None = None
        self._start_epoch = int(start_epoch)
        self._orders: dict[int, np.ndarray] = {}

    # --- state ---------------------------------------------------------------------------
    def _fresh_state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "cursor": 0, "buffer": [], "skipped": 0, "batches": 0, "samples": 0,
                "oversize": 0, "shard": None, "num_shards": None}

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._state if self._state is not None else self._fresh_state(self._start_epoch))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = copy.deepcopy(dict(state))

    def set_epoch(self, epoch: int) -> None:
        """Start the next ``iter()`` at ``epoch`` with fresh counters (``repeat: false`` passes)."""
        self._start_epoch = int(epoch)
        self._state = None

    # --- helpers -------------------------------------------------------------------------
    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def epoch_order(self, epoch: int) -> Any:
        """All indices of ``epoch`` in visiting order (before sharding): a sequence supporting
        ``len``, ``[i]`` and ``[start::step]``.

        Up to :data:`LAZY_ORDER_ABOVE` samples this is numpy's permutation seeded by
        ``(seed, epoch)``, held as uint32 (the same order as an int64 ``permutation(n)``, half the
        memory); above it, a keyed bijection computed per position (:class:`FeistelOrder`: no memory,
        no start-up cost — at 800M samples a materialised order would be 3.2 GB in every worker).
        Without shuffling it is a ``range``.
        """
        if epoch not in self._orders:
            n = len(self.source)
            if not self.config.loader.shuffle:
                order: Any = range(n)
            elif n > LAZY_ORDER_ABOVE:
                order = FeistelOrder(n, (self.seed, int(epoch), 0x5EED))
            else:
                order = np.arange(n, dtype=np.uint32 if n < 2**32 else np.int64)
                np.random.default_rng([self.seed, int(epoch), 0x5EED]).shuffle(order)
            self._orders = {epoch: order}  # keep only the current epoch
        return self._orders[epoch]

    def _load(self, index: int, epoch: int, st: dict[str, Any]) -> _Item | None:
        return self._load_from(index, epoch, st, self.source.native_size, self.source.get)

    def _load_from(self, index: int, epoch: int, st: dict[str, Any], native_size: Any, get: Any) -> _Item | None:
        """Draw the size and caption of sample ``index`` (seeded by ``(seed, epoch, index)``) and load it
        through ``native_size(index)`` / ``get(index, size)``; None (counted) when it is unreadable."""
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        try:
            native = native_size(index)
            bucket = self.resolution.choose(rng, native)
            sample = get(int(index), bucket.size)
            prompt, field = self.captions.choose(sample.captions, rng)
        except (SampleError, OSError) as e:
            st["skipped"] += 1
            n = st["skipped"]
            if n <= 10 or n % 100 == 0:
                log.warning("skipping unreadable sample %d (%s: %s); %d skipped so far in shard %s",
                            index, type(e).__name__, e, n, st["shard"])
            return None
        if tuple(sample.image.shape[-2:]) != bucket.size or sample.image.shape[0] != 3:
            raise LensforgeError(
                f"data source {type(self.source).__name__} returned an image of shape {tuple(sample.image.shape)} "
                f"for requested size {bucket.size}"
            )
        img_tokens = bucket.tokens(self.downsample)
        return _Item(epoch=int(epoch), index=int(index), sample=sample, prompt=prompt, field=field,
                     bucket=f"{bucket.aspect}@{bucket.base}", img_tokens=img_tokens,
                     txt_tokens=estimate_text_tokens(prompt, self.packing))

    def _batch(self, items: list[_Item], st: dict[str, Any], packer: TokenBudgetPacker) -> DataBatch:
        img_t = sum(it.img_tokens for it in items)
        txt_t = sum(it.txt_tokens for it in items)
        sizes = {tuple(it.sample.image.shape[-2:]) for it in items}
        metas = []
        for it in items:
            m = dict(it.sample.meta)
            m.setdefault("captions", dict(it.sample.captions))  # every field: `lensforge cache` encodes each one in use
            m.update({"index": it.index, "epoch": it.epoch, "caption_field": it.field, "bucket": it.bucket,
                      "image_tokens": it.img_tokens, "text_tokens_estimate": it.txt_tokens})
            metas.append(m)
        return DataBatch(
            images=[it.sample.image for it in items],
            prompts=[it.prompt for it in items],
            keys=[it.sample.key for it in items],
            meta=metas,
            stats={
                "packing_efficiency": (img_t + txt_t) / self.packing.token_budget,
                "image_tokens": float(img_t), "text_tokens": float(txt_t), "num_samples": float(len(items)),
                "num_sizes": float(len(sizes)), "skipped": float(st["skipped"]), "oversize": float(packer.oversize),
                "epoch": float(items[0].epoch), "shard": float(st["shard"]), "batch_index": float(st["batches"]),
            },
        )

    # --- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[DataBatch]:
        return self._run()

    def _resume_state(self, shard: int, num_shards: int) -> dict[str, Any]:
        """The state to start from (restored or fresh), checked against this shard's position."""
        st = self._state if self._state is not None else self._fresh_state(self._start_epoch)
        if st["num_shards"] is not None and (st["shard"], st["num_shards"]) != (shard, num_shards):
            raise LensforgeError(
                f"cannot resume data state of shard {st['shard']}/{st['num_shards']} as shard {shard}/{num_shards}: "
                "resume with the same world size and data.loader.num_workers"
            )
        st["shard"], st["num_shards"] = shard, num_shards
        self._state = st
        return st

    def _run(self) -> Iterator[DataBatch]:
        shard, num_shards = self._shard()
        if len(self.source) < num_shards:
            raise LensforgeError(
                f"the data source has {len(self.source)} samples, fewer than ranks x workers = {num_shards}"
            )
        st = self._resume_state(shard, num_shards)
        p = self.packing
        packer: TokenBudgetPacker[_Item] = TokenBudgetPacker(p.token_budget, p.max_samples, p.lookahead,
                                                                     group_key=size_key if p.group_by_size else None)
        packer.oversize = st["oversize"]
        # sources that read from a slow store fetch the next samples concurrently (remote shards)
        readahead = int(getattr(self.source, "readahead", 0) or 0)
        if readahead and st["buffer"]:
            self.source.prefetch([i for _, i in st["buffer"]])
        for e, i in st["buffer"]:  # restore the samples that were loaded but not yet batched
            item = self._load(i, e, st)
            if item is not None:
                packer.add(item, item.img_tokens + item.txt_tokens)
        if st["buffer"]:
            log.info("data shard %d/%d resumed at epoch %d, position %d with %d buffered samples",
                     shard, num_shards, st["epoch"], st["cursor"], len(st["buffer"]))

        def emit() -> DataBatch:
            b = packer.pop_batch()
            assert b is not None
            st["buffer"] = [[it.epoch, it.index] for it, _ in packer.buffer]
            st["batches"] += 1
            st["samples"] += len(b.items)
            st["oversize"] = packer.oversize
            return self._batch(b.items, st, packer)

        while True:
            epoch = st["epoch"]
            order = self.epoch_order(epoch)[shard::num_shards]
            loaded_this_epoch = 0
            ahead, window = st["cursor"], min(8, readahead)
            while st["cursor"] < len(order):
                # keep `readahead` samples requested past the cursor, in windows of 8, 16, … readahead (the first
                # batch comes soon; later windows are fetched in the background while these decode)
                while readahead and ahead < len(order) and ahead - st["cursor"] < readahead:
                    end = min(len(order), ahead + window)
                    self.source.prefetch([int(i) for i in order[ahead:end]])
                    ahead, window = end, min(readahead, 2 * window)
                idx = int(order[st["cursor"]])
                st["cursor"] += 1
                item = self._load(idx, epoch, st)
                if item is not None:
                    loaded_this_epoch += 1
                    packer.add(item, item.img_tokens + item.txt_tokens)
                    st["buffer"].append([item.epoch, item.index])
                if packer.full:
                    yield emit()
            if not self.config.loader.repeat:  # last epoch: flush (the final batches may be under-filled)
                while packer.buffer:
                    yield emit()
            # with repeat, buffered samples of this epoch are batched together with the next epoch's
            log.info("data shard %d/%d finished epoch %d (%d batches, %d skipped so far)",
                     shard, num_shards, epoch, st["batches"], st["skipped"])
            st["epoch"], st["cursor"] = epoch + 1, 0
            if not self.config.loader.repeat:
                return
            if loaded_this_epoch == 0 and st["batches"] == 0:
                raise LensforgeError(f"data shard {shard}/{num_shards}: no readable sample in a whole epoch")


#: above this many samples, a shuffled epoch order is computed per position (:class:`FeistelOrder`)
LAZY_ORDER_ABOVE = 1 << 24

_M64 = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): seeded, stateless draws."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _M64)) & _M64
        h = (h + 0x9E3779B97F4A7C15) & _M64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
        h ^= h >> 31
    return h


class FeistelOrder:
    """A pseudo-random permutation of ``range(n)`` evaluated per position: a 4-round Feistel network
    over the smallest even power of two ≥ n, cycle-walking values ≥ n back into range. Keyed by
    ``key`` (seed, epoch, …); supports ``len``, ``[i]`` and ``[start:stop:step]`` slices (lazy)."""

    def __init__(self, n: int, key: tuple[int, ...], start: int = 0, step: int = 1, length: int | None = None):
        self.n = int(n)
        self.key = tuple(int(k) for k in key)
        bits = max(2, (self.n - 1).bit_length())
        self._half = (bits + 1) // 2
        self._mask = (1 << self._half) - 1
        self._keys = [mix64(*self.key, r) for r in range(4)]
        self.start, self.step = int(start), int(step)
        self.length = self.n if length is None else int(length)

    def _perm(self, x: int) -> int:
        half, mask = self._half, self._mask
        while True:
            left, right = x >> half, x & mask
            for k in self._keys:
                left, right = right, left ^ (mix64(k, right) & mask)
            x = (left << half) | right
            if x < self.n:
                return x

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self.length)
            length = len(range(start, stop, step))
            return FeistelOrder(self.n, self.key, self.start + start * self.step, self.step * step, length)
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self._perm(self.start + i * self.step)

    def __iter__(self) -> Iterator[int]:
        return (self[i] for i in range(self.length))


def _passthrough(batch: DataBatch) -> DataBatch:
    """Collation is done by the stream (it yields whole DataBatches)."""
    return batch


class PackedLoader(StatefulDataLoader):
    """``StatefulDataLoader`` over a :class:`PackedStream`; also totals the skipped samples.

    ``skipped`` = the sum over shards (workers) of their latest skipped count, as reported by the
    batches seen so far.

    ``state_lag``: how many yielded batches the consumer holds but has not trained on yet when it
    asks for ``state_dict()``. Lightning's training loop prefetches one batch ahead
    (``_PrefetchDataFetcher``), so a checkpoint taken after step ``k`` must hold the loader state
    after batch ``k``, not ``k + 1``: :class:`LensDataModule` uses ``state_lag=1``; a plain loop that
    calls ``state_dict()`` between ``next()`` calls uses 0 (the default).
    """

    def __init__(self, stream: PackedStream, *, num_workers: int = 0, prefetch_factor: int = 2,
                 pin_memory: bool = False, state_lag: int = 0):
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs["prefetch_factor"] = prefetch_factor
        with warnings.catch_warnings():  # torchdata 0.11 calls a deprecated torch.set_vital
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(stream, batch_size=None, collate_fn=_passthrough, num_workers=num_workers,
                             pin_memory=pin_memory, snapshot_every_n_steps=1, **kwargs)
        if state_lag < 0:
            raise LensforgeError(f"state_lag must be >= 0, got {state_lag}")
        self.stream = stream
        self.state_lag = int(state_lag)
        self._skipped_by_shard: dict[int, int] = {}
        self._skipped_done = 0
        self._history: deque[dict[str, Any]] = deque(maxlen=self.state_lag + 1)

    @property
    def skipped_this_pass(self) -> int:
        return int(sum(self._skipped_by_shard.values()))

    @property
    def skipped(self) -> int:
        """Unreadable samples skipped so far (all workers, all passes)."""
        return self._skipped_done + self.skipped_this_pass

    def _full_state(self) -> dict[str, Any]:
        return {"loader": super().state_dict(), "skipped_by_shard": dict(self._skipped_by_shard),
                "skipped_done": self._skipped_done}

    def __iter__(self) -> Iterator[DataBatch]:  # type: ignore[override]
        it = super().__iter__()
        self._history = deque([self._full_state()], maxlen=self.state_lag + 1)
        last_epoch = -1
        for batch in it:
            self._skipped_by_shard[int(batch.stats["shard"])] = int(batch.stats["skipped"])
            last_epoch = max(last_epoch, int(batch.stats["epoch"]))
            if self.state_lag:
                self._history.append(self._full_state())
            yield batch
        # one finished pass (repeat: false): the next iter() starts the next epoch, in every worker
        self._skipped_done += self.skipped_this_pass
        self._skipped_by_shard = {}
        if last_epoch >= 0:
            self.stream.set_epoch(last_epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        if self.state_lag and self._history:
            return copy.deepcopy(self._history[0])  # the state `state_lag` batches ago
        return self._full_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "loader" not in state_dict:  # a plain StatefulDataLoader state
            super().load_state_dict(state_dict)
            return
        self._skipped_by_shard = {int(k): int(v) for k, v in state_dict.get("skipped_by_shard", {}).items()}
        self._skipped_done = int(state_dict.get("skipped_done", 0))
        self._history = deque(maxlen=self.state_lag + 1)
        super().load_state_dict(state_dict["loader"])


def build_source(data_cfg: DataConfig) -> DataSource:
    """Instantiate the data source plugin of a ``data:`` section (validated ref or raw node)."""
    src = data_cfg.source
    if hasattr(src, "build"):
        return src.build()
    from lensforge import registry

    return registry.build("data", src)


def build_loader(data_cfg: DataConfig, *, downsample: int, seed: int, rank: int | None = None,
                 world_size: int | None = None, source: DataSource | None = None, state_lag: int = 0) -> PackedLoader:
    """A :class:`PackedLoader` for one rank (rank/world from ``torch.distributed`` unless given)."""
    if rank is None or world_size is None:
        rank, world_size = dist_rank_world()
    source = source if source is not None else build_source(data_cfg)
    # a source may bring its own stream (webdataset in ``mode: streaming``: lensforge.data.streaming.ShardStream)
    stream_cls: type[PackedStream] = source.stream_class() if callable(getattr(source, "stream_class", None)) else PackedStream
    stream = stream_cls(source, data_cfg, downsample=downsample, seed=seed, rank=rank, world_size=world_size)
    lc = data_cfg.loader
    size = (f"{source.num_shards} streamed shards" if stream_cls is not PackedStream  # type: ignore[attr-defined]
            else f"{len(source)} samples")
    log.info("data: %s with %s, rank %d/%d, %d workers, %d buckets, token budget %d",
             type(source).__name__, size, rank, world_size, lc.num_workers,
             len(stream.resolution.buckets), data_cfg.packing.token_budget)
    return PackedLoader(stream, num_workers=lc.num_workers, prefetch_factor=lc.prefetch_factor,
                        pin_memory=lc.pin_memory, state_lag=state_lag)


def _lightning_datamodule_base() -> type:
    import lightning

    return lightning.LightningDataModule


class LensDataModule(_lightning_datamodule_base()):  # type: ignore[misc]
    """LightningDataModule whose ``train_dataloader()`` is a :class:`PackedLoader` of DataBatches.

    ``state_lag=1`` matches Lightning's one-batch prefetch (see :class:`PackedLoader`); use 0 when the
    loader is iterated by hand (e.g. ``lensforge cache``) or through ``dataloader_iter``.
    """

    def __init__(self, data_cfg: DataConfig, *, downsample: int, seed: int, state_lag: int = 1):
        super().__init__()
        self.state_lag = int(state_lag)
        self.data_cfg = data_cfg
        self.downsample = int(downsample)
        self.seed = int(seed)
        self.source: DataSource | None = None
        self.loader: PackedLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source = build_source(self.data_cfg)

    def train_dataloader(self) -> PackedLoader:
        self.setup("fit")
        self.loader = build_loader(self.data_cfg, downsample=self.downsample, seed=self.seed, source=self.source,
                                   state_lag=self.state_lag)
        return self.loader


def build_datamodule(data_cfg: DataConfig, *, downsample: int, seed: int) -> LensDataModule:
    """The stage's entry point: a LightningDataModule yielding packed mixed-size DataBatches."""
    return LensDataModule(data_cfg, downsample=downsample, seed=seed)
