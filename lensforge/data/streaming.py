"""Streaming mode: whole shards per worker, a shuffle buffer, exact resume (no index needed).

``ShardStream`` is the :class:`~lensforge.data.loader.PackedStream` of a source in
``mode: streaming`` (``WebDatasetSource``). The WebDataset convention, with lensforge's packing
and resume:

* **Shards, not samples, are split**: each epoch the shard list is permuted (seeded by
  ``(seed, epoch)``) and worker ``shard = rank · num_workers + worker`` takes
  ``order[shard::ranks · workers]`` — disjoint across nodes, ranks and workers, and together the
  whole set. It needs at least ``ranks × workers`` shards.
* Each worker reads its shards sequentially (one stream per shard: a local file, or a buffered /
  streamed remote object), groups consecutive members by key, and passes samples through a
  **shuffle buffer** of ``shuffle_buffer`` samples (held as bytes; picks seeded by
  ``(seed, epoch, shard, draw)``), then on to the token-budget packer. At an epoch's end the buffer
  drains, so every sample appears once per epoch.
* **Exact resume**: the state saved with every batch (inside torchdata's StatefulDataLoader state)
  is the position in the worker's shard list, the member ordinal and byte offset of the next sample
  in the current shard, and the ``(shard, ordinal, offset, size)`` of every sample held in the
  shuffle buffer and in the packer. A restart (after ``kill -9``) re-reads those few samples by
  ranged reads, reopens the current shard at the byte offset and continues with the very same
  batches. Resume with the same world size and ``num_workers``.
* A sample's size and caption are seeded by ``(seed, epoch, id)``, ``id = shard << 32 | ordinal``
  (``meta["index"]``).
* A damaged shard ends early: the samples before the damage are used, the rest is skipped and
  counted (``skipped``, once per damaged shard); an undecodable member is skipped and counted like
  any unreadable sample.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

from lensforge.data.loader import PackedStream, _Item, mix64, size_key
from lensforge.data.packing import TokenBudgetPacker
from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch, SampleError

log = logging.getLogger("lensforge.data")

_Entry = tuple[list[int], "str | None", "list[tuple[str, bytes]] | None"]  # (ref, key, members); None = unreadable


class ShardStream(PackedStream):
    """Packed, resumable stream over shards read in order (see the module docstring)."""

    def _fresh_state(self, epoch: int) -> dict[str, Any]:
        st = super()._fresh_state(epoch)
        st["stream"] = {"spos": 0, "member": 0, "byte": 0, "shuffle": [], "drawn": 0, "bad_shards": 0}
        return st

    def shard_order(self, epoch: int) -> np.ndarray:
        """Every shard index in this epoch's order (before splitting across ranks and workers)."""
        n = self.source.num_shards
        if self.config.loader.shuffle:
            return np.random.default_rng([self.seed, int(epoch), 0x5EED, 1]).permutation(n)
        return np.arange(n)

    def _buffer_size(self) -> int:
        return max(1, int(self.source.config.shuffle_buffer)) if self.config.loader.shuffle else 1

    # --- one sample -------------------------------------------------------------------------
    def _load_entry(self, epoch: int, entry: _Entry, st: dict[str, Any]) -> _Item | None:
        ref, key, members = entry
        si, k = int(ref[0]), int(ref[1])
        if members is None or key is None:  # could not be re-read on resume
            st["skipped"] += 1
            return None
        return self._load_from((si << 32) | k, epoch, st,
                               lambda _i: self.source.native_of(si, key, members),
                               lambda _i, size: self.source.decode(si, key, members, size))

    def _reread(self, ref: list[int], st: dict[str, Any]) -> _Entry:
        si, _, off, size = (int(x) for x in ref)
        try:
            key, members = self.source.read_ref(si, off, size)
        except (OSError, SampleError) as e:  # kept as a placeholder: skipped and counted when it is drawn
            log.warning("cannot re-read buffered sample %s on resume (%s)", ref, e)
            return list(ref), None, None
        return list(ref), key, members

    def _draw(self, shuf: list[_Entry], ss: dict[str, Any], epoch: int, shard: int) -> _Entry:
        j = mix64(self.seed, epoch, shard, ss["drawn"]) % len(shuf)
        ss["drawn"] += 1
        shuf[j], shuf[-1] = shuf[-1], shuf[j]
        refs = ss["shuffle"]
        refs[j], refs[-1] = refs[-1], refs[j]
        refs.pop()
        return shuf.pop()

    # --- iteration --------------------------------------------------------------------------
    def _run(self) -> Iterator[DataBatch]:
        shard, num_shards = self._shard()
        if self.source.num_shards < num_shards:
            raise LensforgeError(
                f"streaming {self.source.num_shards} shards to ranks x workers = {num_shards} readers: every reader "
                "needs a shard of its own; write more (smaller) shards, use fewer workers, or use mode: indexed"
            )
        st = self._resume_state(shard, num_shards)
        ss = st["stream"]
        p = self.packing
        packer: TokenBudgetPacker[_Item] = TokenBudgetPacker(p.token_budget, p.max_samples, p.lookahead,
                                                                     group_key=size_key if p.group_by_size else None)
        packer.oversize = st["oversize"]
        for e, ref in st["buffer"]:  # samples loaded but not yet batched
            item = self._load_entry(e, self._reread(ref, st), st)
            if item is not None:
                item.ref = list(ref)  # type: ignore[attr-defined]
                packer.add(item, item.img_tokens + item.txt_tokens)
        shuf: list[_Entry] = [self._reread(ref, st) for ref in ss["shuffle"]]
        if st["buffer"] or shuf:
            log.info("data shard %d/%d resumed at epoch %d, shard position %d, sample %d (%d + %d buffered)",
                     shard, num_shards, st["epoch"], ss["spos"], ss["member"], len(st["buffer"]), len(shuf))
        buf_size = self._buffer_size()

        def on_error(msg: str) -> None:
            st["skipped"] += 1
            ss["bad_shards"] += 1
            log.warning("data shard %d/%d: damaged shard skipped from the damage on: %s (%d damaged so far)",
                        shard, num_shards, msg, ss["bad_shards"])

        def emit() -> DataBatch:
            b = packer.pop_batch()
            assert b is not None
            st["buffer"] = [[it.epoch, list(it.ref)] for it, _ in packer.buffer]  # type: ignore[attr-defined]
            st["batches"] += 1
            st["samples"] += len(b.items)
            st["oversize"] = packer.oversize
            return self._batch(b.items, st, packer)

        def take(entry: _Entry, epoch: int) -> bool:
            item = self._load_entry(epoch, entry, st)
            if item is None:
                return False
            item.ref = list(entry[0])  # type: ignore[attr-defined]
            packer.add(item, item.img_tokens + item.txt_tokens)
            return True

        while True:
            epoch = st["epoch"]
            mine = self.shard_order(epoch)[shard::num_shards]
            loaded_this_epoch = 0
            while ss["spos"] < len(mine):
                si = int(mine[ss["spos"]])
                for k, off, size, key, members, nxt in self.source.stream_shard(si, ss["byte"], ss["member"], on_error):
                    ss["member"], ss["byte"] = k + 1, nxt
                    entry: _Entry = ([si, k, off, size], key, members)
                    if buf_size > 1:
                        shuf.append(entry)
                        ss["shuffle"].append(list(entry[0]))
                        if len(shuf) < buf_size:
                            continue
                        entry = self._draw(shuf, ss, epoch, shard)
                    if take(entry, epoch):
                        loaded_this_epoch += 1
                    if packer.full:
                        yield emit()
                ss["spos"], ss["member"], ss["byte"] = ss["spos"] + 1, 0, 0
            while shuf:  # the epoch's last samples leave the shuffle buffer in seeded order
                if take(self._draw(shuf, ss, epoch, shard), epoch):
                    loaded_this_epoch += 1
                if packer.full:
                    yield emit()
            if not self.config.loader.repeat:
                while packer.buffer:
                    yield emit()
            log.info("data shard %d/%d finished epoch %d (%d batches, %d skipped so far)",
                     shard, num_shards, epoch, st["batches"], st["skipped"])
            st["epoch"] = epoch + 1
            ss.update(spos=0, member=0, byte=0, drawn=0)
            if not self.config.loader.repeat:
                return
            if loaded_this_epoch == 0 and st["batches"] == 0:
                raise LensforgeError(f"data shard {shard}/{num_shards}: no readable sample in a whole epoch")
