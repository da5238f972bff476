"""imaging_quality: MUSIQ (SPAQ checkpoint) through pyiqa, as VBench's ``vbench/imaging_quality.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.frames import batches, longer_side_limit
from eval.metric import Metric, MissingDependencyError, VideoSample, register_metric, resolve_weight


def check_plain_weights(path: Path) -> None:
    """Refuse a MUSIQ checkpoint that holds more than tensors and plain data (it would run code).

    pyiqa reads it with a bare ``torch.load``, whose weights-only default an environment variable
    (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) or a pyiqa release can turn off; a file that passes the
    weights-only reader here calls nothing else when pyiqa reads the same bytes.
    """
    from vdiff.checkpoint import load_plain_weights

    load_plain_weights(path, what="weights.musiq")


@register_metric("imaging_quality", doc="MUSIQ-SPAQ score per frame (pyiqa), video mean; aggregate / 100")
class ImagingQuality(Metric):
    """Mean MUSIQ score of all frames, each shrunk so its longer side is at most 512 px."""

    name = "imaging_quality"

    def __init__(self, cfg: Any) -> None:
        path = resolve_weight(
            cfg.weights.musiq,
            key="weights.musiq",
            env="VDIFF_MUSIQ",
            what="the MUSIQ-SPAQ checkpoint musiq_spaq_ckpt-358bb6af.pth",
            dimension=self.name,
        )
        try:
            from pyiqa.archs.musiq_arch import MUSIQ
        except ImportError as e:
            raise MissingDependencyError(
                f"dimension 'imaging_quality' needs pyiqa for the MUSIQ architecture: pip install pyiqa ({e})"
            ) from e
        check_plain_weights(path)
        self.model = MUSIQ(pretrained_model_path=str(path)).to(cfg.device).eval()
        self.device, self.batch_size = cfg.device, cfg.batch_size

    @torch.no_grad()
    def compute(self, video: VideoSample) -> dict[str, Any]:
        pixels = longer_side_limit(video.frames)  # (T, 3, H', W') in [0, 1]
        scores = [
            self.model(b.to(self.device)).reshape(-1).float().cpu() for b in batches(pixels, self.batch_size)
        ]
        return {"video_results": float(torch.cat(scores).mean())}

    def aggregate(self, entries: list[dict[str, Any]]) -> float:
        # NOTE: VBench keeps per-video MUSIQ scores on MUSIQ's 0-100 scale and divides only the
        # aggregate by 100 (NORMALIZE_DIC expects imaging quality in [0, 1]).
        return float(np.mean([e["video_results"] for e in entries])) / 100.0 if entries else float("nan")
