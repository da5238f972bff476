"""What a training run logs: ``RUN/metrics.jsonl`` rows, TensorBoard scalars, throughput, peak memory,
and ``RUN/bad_samples.jsonl`` (the samples ``data.on_error=skip`` passed over).

A metrics row is one JSON object a line with at least ``step``; ``vdiff train`` writes ``loss``,
``lr``, ``grad_norm``, ``samples_per_s``, ``tokens_per_s``, ``max_memory_mb``, ``time``,
``shift`` and ``data_skipped``, and ``mfu`` when the devices' peak FLOP/s is known
(:func:`device_peak_flops`). TensorBoard gets each value but ``step`` as ``train/<key>``.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vdiff.config import ConfigError
from vdiff.data import ShardLoader
from vdiff.io.files import atomic_write_text
from vdiff.models import ModelConfig
from vdiff.models.flops import peak_flops, train_flops

METRICS_FILE = "metrics.jsonl"
"""in the run folder: one JSON row a logged step"""

BAD_SAMPLES_FILE = "bad_samples.jsonl"
"""in the run folder: the samples data.on_error=skip passed over (shard, key, error, first epoch)"""


@dataclass
class Throughput:
    """Samples and latent tokens per second over the steps since the last :meth:`rates` call.

    Steps before ``warmup`` (counted from this process's first step) are not counted, so
    compilation, allocator growth and first-batch decoding do not lower the figures.
    """

    warmup: int
    seen: int = 0
    seconds: float = 0.0
    samples: int = 0
    tokens: int = 0

    def add(self, seconds: float, *, samples: int, tokens: int) -> None:
        """Count one step that took ``seconds`` for ``samples`` clips of ``tokens`` tokens in all."""
        self.seen += 1
        if self.seen > self.warmup:
            self.seconds += seconds
            self.samples += samples
            self.tokens += tokens

    def rates(self) -> tuple[float | None, float | None]:
        """(samples/s, tokens/s) of the window, then start a new one; None while only warm-up steps ran."""
        if self.seconds <= 0:
            return None, None
        out = (self.samples / self.seconds, self.tokens / self.seconds)
        self.seconds, self.samples, self.tokens = 0.0, 0, 0
        return out


def max_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA max allocated on ``device``, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # NOTE: ru_maxrss is in KiB on Linux (bytes on macOS); it covers the whole process.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def device_peak_flops(device: torch.device, *, override_tflops: float = 0.0) -> float | None:
    """Dense bf16 peak FLOP/s of all the job's devices together (one a rank), or None if unknown.

    The peak of one device is ``override_tflops`` (``train.peak_tflops``) when > 0, else
    ``$VDIFF_PEAK_TFLOPS``, else looked up by the CUDA device's name
    (:data:`vdiff.models.flops.PEAK_BF16_TFLOPS`); a CPU has none unless overridden.
    """
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    peak = peak_flops(name, override_tflops=override_tflops)
    if peak is None:
        return None
    return peak * (dist.get_world_size() if dist.is_initialized() else 1)


def training_mfu(
    samples_per_s: float | None,
    model: ModelConfig,
    *,
    latent_shape: tuple[int, ...],
    text_len: int,
    peak: float,
) -> float | None:
    """Model FLOPs utilisation of a full fine-tune at ``samples_per_s`` (None while it is None).

    ``latent_shape`` is one sample's (C, T, H, W), ``text_len`` the text embeddings' length and
    ``peak`` the FLOP/s of all devices (:func:`device_peak_flops`). The FLOPs are
    :func:`vdiff.models.flops.train_flops`: dense attention, no activation-checkpoint
    recomputation; with LoRA the frozen weights' gradients are counted too, so the figure is high.
    """
    if samples_per_s is None:
        return None
    grid = [s // p for s, p in zip(latent_shape[1:], model.patch_size)]
    tokens = grid[0] * grid[1] * grid[2]
    return samples_per_s * train_flops(model, tokens=tokens, text_len=text_len) / peak


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks (every rank calls it); ``value`` without a process group."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def open_tensorboard(run: Path, *, purge_step: int | None) -> Any:
    """A SummaryWriter on ``run/tb``; events at ``purge_step`` or later (from a killed run) are dropped."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard "
            "(or set train.tensorboard=false)"
        ) from e
    return SummaryWriter(log_dir=str(run / "tb"), purge_step=purge_step)


def write_metrics(path: Path, row: dict[str, Any], *, writer: Any = None) -> None:
    """Append ``row`` to the metrics file ``path``; also to TensorBoard ``writer`` (None: not)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for key, value in row.items():
            if key != "step" and value is not None:
                writer.add_scalar(f"train/{key}", value, row["step"])


def bad_samples_over_ranks(loader: ShardLoader, group: Any) -> tuple[int, list[dict[str, Any]]]:
    """(skipped sample reads, one record per bad sample) over the data-parallel ranks (every rank calls it).

    The list is ordered by (epoch, shard, key), so it does not depend on the number of ranks.
    """
    per_rank = [(loader.skipped, loader.bad_samples)]
    if group is not None:
        per_rank = [None] * dist.get_world_size(group)
        dist.all_gather_object(per_rank, (loader.skipped, loader.bad_samples), group=group)
    records = {(r["shard"], r["key"]): r for _, bad in per_rank for r in bad}
    ordered = sorted(records.values(), key=lambda r: (r["epoch"], r["shard"], r["key"]))
    return sum(n for n, _ in per_rank), [*loader.index_errors, *ordered]


def write_bad_samples(path: Path, records: list[dict[str, Any]]) -> None:
    """``RUN/bad_samples.jsonl``: a line per sample data.on_error=skip passed over (written once any was)."""
    if records or path.exists():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def report_bad_samples(
    run: Path, skipped: int, records: list[dict[str, Any]], *, command: str = "vdiff train"
) -> None:
    """At the end of a run: write ``run``'s bad-samples file and say on stderr how many were passed over."""
    write_bad_samples(run / BAD_SAMPLES_FILE, records)
    if skipped:
        print(
            f"{command}: data.on_error=skip passed over {skipped} reads of {len(records)} bad "
            f"samples; see {run / BAD_SAMPLES_FILE}",
            file=sys.stderr,
            flush=True,
        )
