"""Reading batches ahead in worker processes: a torch DataLoader over planned batch positions.

The main process plans (a sampler yields ``(epoch, step, indices)`` in training order) and the
workers only read: each key is one whole batch, loaded by a
:class:`~vdiff.data.loader.SampleReader` exactly as the training process would load it, so
the batches are the in-process ones. The DataLoader keeps ``num_workers × prefetch_factor``
batches in flight and hands them back in order. An error in a worker comes back as the same
exception (type and message) with the worker's traceback as a note.
"""

from __future__ import annotations

import os
import pickle
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from vdiff.data.loader import BatchPlan, SampleReader

Key = tuple[int, int, tuple[int, ...]]
"""(epoch, step, this rank's sample indices): one batch to read"""


def portable_error(error: Exception) -> Exception:
    """``error`` with its traceback as a note, or a RuntimeError of the same text if it cannot be pickled."""
    trace = "".join(traceback.format_exception(error))
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        error = RuntimeError(f"{type(error).__name__}: {error}")
    error.add_note(f"raised in data-loader worker process {os.getpid()}:\n{trace}")
    return error


class PlannedKeys:
    """The keys of every batch from ``start`` on, in training order (iterated in the main process)."""

    def __init__(self, schedule: BatchPlan, start: tuple[int, int]) -> None:
        self.schedule, self.start = schedule, start

    def __iter__(self) -> Iterator[Key]:
        for epoch, step in self.schedule.positions(*self.start):
            yield epoch, step, tuple(self.schedule.batch_indices(epoch, step))


class PlannedBatches(Dataset):
    """Map-style dataset whose items are whole batches: key -> ``((epoch, step), batch, error)``."""

    def __init__(self, reader: SampleReader) -> None:
        self.reader = reader

    def __getitem__(self, key: Key) -> tuple[tuple[int, int], dict[str, Any] | None, Exception | None]:
        epoch, step, indices = key
        try:
            return (epoch, step), self.reader.batch(list(indices), epoch), None
        except Exception as e:
            # NOTE: returned, not raised: DataLoader would re-raise a worker's error as another
            # type with its own text; this way the main process raises this very error.
            return (epoch, step), None, portable_error(e)


def _as_is(item: Any) -> Any:
    return item


class Prefetcher:
    """Batches from position ``start`` on, read ahead by ``num_workers`` processes."""

    def __init__(
        self,
        reader: SampleReader,
        schedule: BatchPlan,
        *,
        start: tuple[int, int],
        num_workers: int,
        seed: int,
        prefetch_factor: int = 2,
    ) -> None:
        self.schedule = schedule
        self.next_position = start
        """the position of the batch :meth:`next` returns"""
        loader = DataLoader(
            PlannedBatches(reader),
            sampler=PlannedKeys(schedule, start),
            batch_size=None,
            collate_fn=_as_is,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            # NOTE: without its own generator, DataLoader draws its workers' base seed from the
            # global torch RNG, which would shift the training noise (and break exact resume).
            generator=torch.Generator().manual_seed(seed),
        )
        self._batches: Iterator[Any] | None = iter(loader)

    def next(self) -> dict[str, Any]:
        """The batch at :attr:`next_position`; a worker's error is raised here."""
        if self._batches is None:
            raise RuntimeError("this Prefetcher was closed")
        position, batch, error = next(self._batches)
        if position != self.next_position:
            raise RuntimeError(f"data workers returned batch {position}, expected {self.next_position}")
        if error is not None:
            raise error
        self.next_position = self.schedule.normalize(position[0], position[1] + 1)
        return batch

    def close(self) -> None:
        """Stop the workers now (they also stop when this object is dropped)."""
        batches, self._batches = self._batches, None
        # NOTE: _shutdown_workers is what the DataLoader iterator's __del__ calls; calling it
        # here stops the workers at once instead of whenever the iterator is collected.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
