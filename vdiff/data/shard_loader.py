"""The training loader: :class:`ShardLoader`, batches of :mod:`vdiff.data.loader` per data-parallel rank.

Kept apart from :mod:`vdiff.data.loader` (readers and the batch plan), which
:mod:`vdiff.data.workers` builds on: the loader composes both, so neither imports the other's
importer (no import cycle).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vdiff.data.loader import (
    SKIPPED_KEY,
    BatchPlan,
    DataConfig,
    SampleReader,
    _complete,
    _meta,
    bad_sample_record,
    bucket_index,
    detect_kind,
    naming_sample,
)
from vdiff.data.shards import SampleRef, index_shard, list_shards, read_sample
from vdiff.data.workers import Prefetcher


class ShardLoader:
    """Infinite, deterministic, resumable batches for one data-parallel rank (see module doc).

    With ``data.num_workers > 0`` raw clips are decoded ahead in worker processes
    (:class:`vdiff.data.workers.Prefetcher`); the batches are the same as in-process. Call
    :meth:`close` (or use ``with``) to stop the workers early; dropping the loader stops them too.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"data rank {rank} is outside the data-parallel world of {world}")
        if batch_size < 1:
            raise ValueError(f"the per-rank batch size must be >= 1, got {batch_size}")
        cfg.validate()
        self.cfg = cfg
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.refs = [ref for shard in list_shards(cfg.path) for ref in index_shard(shard)]
        if not self.refs:
            raise ValueError(f"data.path={cfg.path}: the shards hold no samples")
        self.kind = detect_kind(self.refs[0]) if cfg.kind == "auto" else cfg.kind
        self.global_batch = batch_size * world
        sizes = cfg.sizes()
        self.bucket = [0] * len(self.refs)
        self.index_errors: list[dict[str, Any]] = []
        """records of the samples left out of every epoch: their size could not be read (on_error=skip)"""
        if len(sizes) > 1:
            self.bucket = [self._bucket_of(r, sizes) for r in self.refs]
        self.reader = SampleReader(self.refs, cfg, kind=self.kind, seed=seed, bucket=self.bucket)
        self.schedule = BatchPlan(
            self.bucket, batch_size=batch_size, rank=rank, world=world, seed=seed, shuffle=cfg.shuffle
        )
        self.epoch = 0
        self.step_in_epoch = 0
        self.skipped = 0
        """bad-sample reads skipped so far in the batches handed out (each epoch reads a bad sample again)"""
        self.bad_samples: list[dict[str, Any]] = []
        """one record per bad sample met so far (shard, key, error, first epoch), in the order met"""
        self._prefetch: Prefetcher | None = None
        if not self.plan(0):
            usable = sum(b >= 0 for b in self.bucket)
            left_out = f" ({len(self.index_errors)} unreadable left out)" if self.index_errors else ""
            raise ValueError(
                f"data.path={cfg.path} has {usable} usable samples{left_out}, fewer than one global batch "
                f"of {self.global_batch} (in any one bucket); lower train.batch_size or add data"
            )

    def _bucket_of(self, ref: SampleRef, sizes: list[tuple[int, int]]) -> int:
        """The bucket of a sample; -1 (never read) when its size cannot be read and data.on_error=skip."""
        try:
            return naming_sample(
                ref, lambda: bucket_index(self._size_meta(ref), sizes, name=f"{ref.shard}:{ref.key}")
            )
        except MemoryError:
            raise
        except Exception as e:
            if self.cfg.on_error == "raise":
                raise
            self.index_errors.append(bad_sample_record(ref, e, epoch=0))
            return -1

    def _size_meta(self, ref: SampleRef) -> dict[str, Any]:
        """A sample's json; a raw clip without ``width``/``height`` in it is probed for them."""
        meta = _meta(ref, read_sample(ref, ("json",)))
        if self.kind == "cached" or ("width" in meta and "height" in meta):
            return meta
        return _complete(ref, meta, read_sample(ref), need=("width", "height"))

    def order(self, epoch: int) -> list[int]:
        """Sample indices of an epoch (the same on every rank)."""
        return self.schedule.order(epoch)

    def plan(self, epoch: int) -> list[list[int]]:
        """The global batches of an epoch: filled in permutation order, one bucket at a time."""
        return self.schedule.batches(epoch)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches in the current epoch (constant without buckets)."""
        return len(self.plan(self.epoch))

    def batch_indices(self, epoch: int, step: int) -> list[int]:
        """This rank's sample indices of global batch ``step`` of ``epoch``."""
        return self.schedule.batch_indices(epoch, step)

    def load(self, index: int, epoch: int) -> dict[str, Any]:
        """One sample outside the stream (not counted); a bad one is replaced as in batches
        (``data.on_error=skip``). A raw clip's random start is seeded by (seed, epoch, index)."""
        return self.reader.load_or_replace(index, epoch)[0]

    @property
    def uses_workers(self) -> bool:
        """Whether batches come from worker processes (``data.num_workers > 0``, raw shards)."""
        # NOTE: cached samples are a file read and a safetensors parse (~0.2 ms); sending them
        # through worker processes costs more than it saves (bench/loader.py), so they stay here.
        return self.cfg.num_workers > 0 and self.kind != "cached"

    def next_batch(self) -> dict[str, Any]:
        """The batch at the current position; the position then moves past it."""
        epoch, step = self.schedule.normalize(self.epoch, self.step_in_epoch)
        if self.uses_workers:
            batch = self._from_workers(epoch, step)
        else:
            batch = self.reader.batch(self.batch_indices(epoch, step), epoch)
        self.epoch, self.step_in_epoch = epoch, step + 1
        self._count(batch.pop(SKIPPED_KEY, []))
        return batch

    def _count(self, skipped: list[dict[str, Any]]) -> None:
        self.skipped += len(skipped)
        known = {(r["shard"], r["key"]) for r in self.bad_samples}
        for record in skipped:
            if (record["shard"], record["key"]) not in known:
                known.add((record["shard"], record["key"]))
                self.bad_samples.append(record)

    def _from_workers(self, epoch: int, step: int) -> dict[str, Any]:
        # NOTE: the workers read ahead from where they started; a position they are not at
        # (first batch, load_state_dict, after an error) starts them afresh there.
        if self._prefetch is None or self._prefetch.next_position != (epoch, step):
            self.close()
            workers = self.cfg.num_workers
            self._prefetch = Prefetcher(
                self.reader, self.schedule, start=(epoch, step), num_workers=workers, seed=self.seed
            )
        try:
            return self._prefetch.next()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_batch()

    def close(self) -> None:
        """Stop the worker processes and drop what they read ahead (the position is kept)."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            prefetch.close()

    def __enter__(self) -> ShardLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        """The position after the last yielded batch (batches read ahead but not yielded do not count),
        and, once a bad sample was skipped, the skip count and the bad samples' records."""
        state: dict[str, Any] = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch}
        if self.skipped:
            state.update(skipped=self.skipped, bad_samples=[dict(r) for r in self.bad_samples])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the next batch is the one after it)."""
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.skipped = int(state.get("skipped", 0))
        self.bad_samples = [dict(r) for r in state.get("bad_samples", [])]
