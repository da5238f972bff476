"""Frame sampling and model input transforms, following VBench's ``vbench/utils.py``.

VBench resizes with torchvision on float tensors (``antialias=False``); torchvision's tensor
``Resize`` is ``torch.nn.functional.interpolate`` underneath, so the same call is made here
without a torchvision dependency.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def middle_frame_indices(num_frames: int, vlen: int) -> list[int]:
    """VBench's ``get_frame_indices(sample="middle")``: the middle of ``num_frames`` equal intervals,
    padded with the last index when the video is shorter."""
    if vlen <= 0:
        raise ValueError("cannot sample frames from an empty video")
    acc = min(num_frames, vlen)
    edges = np.linspace(0, vlen, acc + 1).astype(int)
    idx = [int((a + (b - 1)) // 2) for a, b in itertools.pairwise(edges)]
    return idx + [idx[-1]] * (num_frames - len(idx))


def every_kth_index(vlen: int, fps: float, target_fps: float = 8.0) -> list[int]:
    """VBench dynamic_degree's sampling: every ``max(1, round(fps / 8))``-th frame from the first."""
    interval = max(1, round(fps / target_fps))
    return list(range(0, vlen, interval))


def shorter_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` output: the shorter side becomes ``size``, the longer is truncated."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [0, 255]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def _normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``CenterCrop`` offsets: ``round((H - size) / 2)``."""
    h, w = x.shape[-2:]
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return x[..., top : top + size, left : left + size]


def clip_transform(frames: np.ndarray, n_px: int = 224) -> torch.Tensor:
    """VBench ``clip_transform``: bicubic resize (shorter side), center crop, /255, CLIP normalise.

    Returns (T, 3, n_px, n_px) float32.
    """
    x = to_tensor(frames)  # (T, 3, H, W)
    x = F.interpolate(x, size=shorter_side_size(*x.shape[-2:], n_px), mode="bicubic", align_corners=False)
    x = center_crop(x, n_px) / 255.0
    return _normalize(x, CLIP_MEAN, CLIP_STD)


def dino_transform(frames: np.ndarray, n_px: int = 224) -> torch.Tensor:
    """VBench ``dino_transform``: bilinear resize of the shorter side (no crop), /255, ImageNet normalise.

    Returns (T, 3, H', W') float32.
    """
    x = to_tensor(frames)  # (T, 3, H, W)
    x = F.interpolate(x, size=shorter_side_size(*x.shape[-2:], n_px), mode="bilinear", align_corners=False)
    return _normalize(x / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def longer_side_limit(frames: np.ndarray, max_size: int = 512) -> torch.Tensor:
    """VBench imaging_quality ``longer`` mode: shrink so the longer side is <= 512, then /255.

    Returns (T, 3, H', W') float32 in [0, 1].
    """
    x = to_tensor(frames)
    h, w = x.shape[-2:]
    if max(h, w) > max_size:
        scale = max_size / max(h, w)
        x = F.interpolate(x, size=(int(scale * h), int(scale * w)), mode="bilinear", align_corners=False)
    return x / 255.0


def batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split along the first axis into chunks of at most ``batch_size``."""
    return list(torch.split(x, max(1, batch_size)))
