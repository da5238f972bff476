"""fvd: Fréchet Video Distance with the StyleGAN-V I3D TorchScript detector, against reference videos.

The detector (``i3d_torchscript.pt``) is called as StyleGAN-V calls it:
``detector(videos, rescale=True, resize=True, return_features=True)`` on (B, 3, T, H, W) float
videos in [0, 255]; it rescales to [-1, 1], resizes to 224 and returns the 400-d logits'
input features. FVD is the Fréchet distance between Gaussians fitted to the two feature sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.metric import Metric, UnscorableVideoError, VideoSample, register_metric, resolve_weight
from eval.vbench import VIDEO_EXTENSIONS


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D), got shape {features.shape}")
    f = features.astype(np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982).

    NOTE: Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2, which
    equal those of the symmetric PSD matrix S1^(1/2) S2 S1^(1/2); using the latter (eigvalsh)
    avoids complex round-off from a general matrix square root on near-singular covariances.
    """
    diff = mu1 - mu2
    root1 = _psd_sqrt(sigma1)
    eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def clip_for_i3d(frames: np.ndarray, num_frames: int) -> torch.Tensor:
    """The first ``num_frames`` frames as a (1, 3, T, H, W) float tensor in [0, 255]."""
    if len(frames) < num_frames:
        raise UnscorableVideoError(f"fvd needs {num_frames} frames, the video has {len(frames)}")
    x = torch.from_numpy(np.ascontiguousarray(frames[:num_frames])).float()  # (T, H, W, 3)
    return x.permute(3, 0, 1, 2).unsqueeze(0)  # (1, 3, T, H, W)


@register_metric("fvd", doc="Fréchet Video Distance (StyleGAN-V I3D) against fvd_reference videos")
class FVD(Metric):
    """Set-level: accumulate I3D features per video, finalize against the reference set."""

    name = "fvd"
    set_level = True
    method = "StyleGAN-V I3D TorchScript"

    def __init__(self, cfg: Any) -> None:
        path = resolve_weight(
            cfg.weights.i3d,
            key="weights.i3d",
            env="VDIFF_I3D",
            what="the StyleGAN-V I3D detector i3d_torchscript.pt",
            dimension=self.name,
        )
        ref = Path(cfg.fvd_reference) if cfg.fvd_reference else None
        if ref is None or not ref.is_dir():
            raise FileNotFoundError(
                f"dimension 'fvd' needs fvd_reference=FOLDER of reference videos (got {ref})"
            )
        self.reference = sorted(p for p in ref.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
        if len(self.reference) < 2:
            raise FileNotFoundError(f"fvd_reference {ref} holds {len(self.reference)} videos; FVD needs >= 2")
        self.detector = torch.jit.load(str(path), map_location=cfg.device).eval()
        self.device, self.num_frames = cfg.device, cfg.fvd_frames
        self.features: list[np.ndarray] = []

    @torch.no_grad()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (D,) I3D features."""
        x = clip_for_i3d(frames, self.num_frames).to(self.device)
        return (
            self.detector(x, rescale=True, resize=True, return_features=True)
            .reshape(-1)
            .float()
            .cpu()
            .numpy()
        )

    def accumulate(self, video: VideoSample) -> None:
        self.features.append(self.embed(video.frames))

    def finalize(self) -> float:
        from vdiff.io.video import VideoError, read_frames

        if len(self.features) < 2:
            raise UnscorableVideoError(f"fvd needs >= 2 scored videos, got {len(self.features)}")
        ref = []
        for p in self.reference:
            try:
                ref.append(self.embed(read_frames(p)))
            except (VideoError, UnscorableVideoError) as e:
                self.skipped.append({"video_path": str(p), "reason": f"fvd reference not used: {e}"})
        if len(ref) < 2:
            raise UnscorableVideoError(f"fvd needs >= 2 usable reference videos, got {len(ref)}")
        return frechet_distance(*gaussian_stats(np.stack(self.features)), *gaussian_stats(np.stack(ref)))
