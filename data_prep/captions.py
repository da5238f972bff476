"""Pluggable clip captioning: ``sidecar`` files or maps, a local ``vlm``, or ``none``.

* ``sidecar``: ``VIDEO.txt`` (the caption) or ``VIDEO.json`` (``{"caption": ...}``) next to the
  video, or a CSV (columns ``path,caption``) / JSONL (``{"path": ..., "caption": ...}``) map
  named by ``caption.map_file``; every clip of a video gets that video's caption.
* ``vlm``: any local vision-language model that transformers loads with ``AutoProcessor`` and
  ``AutoModelForImageTextToText`` (e.g. Qwen2.5-VL), from a local folder only; ``num_frames``
  frames sampled evenly from each clip are shown to it with ``prompt``, in batches.
* ``none``: empty captions.

Nothing is fetched over the network: :func:`caption_preflight` checks the paths before any
video is processed.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from vdiff.config import ConfigError


@dataclass
class CaptionConfig:
    """How kept clips get their caption."""

    method: Literal["sidecar", "vlm", "none"] = "sidecar"
    """sidecar: VIDEO.txt / VIDEO.json beside the video or map_file; vlm: a local VLM; none: empty"""
    map_file: str = ""
    """with method=sidecar, an optional CSV (path,caption) or JSONL ({path, caption}) map"""
    required: bool = False
    """clips left without a caption get status no_caption instead of being kept with an empty one"""
    model_path: str = ""
    """with method=vlm, a local folder holding the model, its processor and tokenizer (never downloaded)"""
    prompt: str = "Describe this video clip in one sentence: the scene, the subjects and how they move."
    """with method=vlm, the instruction given with the frames"""
    num_frames: int = 4
    """with method=vlm, frames sampled evenly from each clip"""
    frame_short_side: int = 336
    """with method=vlm, frames are resized so their short side is this many pixels"""
    batch_size: int = 4
    """with method=vlm, clips captioned per generate() call"""
    max_new_tokens: int = 64
    """with method=vlm, longest caption in tokens"""
    device: str = "cpu"
    """with method=vlm, torch device for the model"""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """with method=vlm, model weights dtype"""

    def validate(self) -> None:
        for name in ("num_frames", "frame_short_side", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"caption.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class CaptionRequest:
    """One clip to caption: its source video and a function giving ``n`` evenly sampled frames."""

    clip_id: str
    source: Path
    frames: Callable[[int], np.ndarray]
    """``frames(n)`` -> (n, H, W, 3) uint8 RGB"""


class Captioner(Protocol):
    def __call__(self, requests: Sequence[CaptionRequest]) -> list[str | None]: ...


def caption_preflight(cfg: CaptionConfig) -> None:
    """Raise :class:`ConfigError` when the captioner cannot run (missing model or map file)."""
    if cfg.method == "vlm":
        if not cfg.model_path:
            raise ConfigError(
                "caption.method=vlm needs caption.model_path=DIR, a local folder with the model "
                "(e.g. a downloaded Qwen2.5-VL); nothing is downloaded at run time"
            )
        path = Path(cfg.model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"caption.model_path={path}: no config.json there. Download the model first "
                "(e.g. `huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR`) "
                "and pass that folder"
            )
    if cfg.method == "sidecar" and cfg.map_file:
        mp = Path(cfg.map_file).expanduser()
        if not mp.is_file():
            raise ConfigError(f"caption.map_file={mp} does not exist")
        if mp.suffix.lower() not in (".csv", ".jsonl"):
            raise ConfigError(f"caption.map_file={mp} must be a .csv or .jsonl file")


# ----------------------------------------------------------------------------- sidecar


def read_caption_map(map_file: str | Path) -> dict[Path, str]:
    """``{resolved video path: caption}`` from a CSV (``path,caption`` header) or JSONL map."""
    map_file = Path(map_file).expanduser()
    base = map_file.parent
    pairs: list[tuple[str, str]] = []
    if map_file.suffix.lower() == ".csv":
        with open(map_file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "caption"} <= set(reader.fieldnames):
                raise ConfigError(f"{map_file}: the CSV needs a header with columns path,caption")
            pairs = [(row["path"], row["caption"]) for row in reader]
    else:
        for n, line in enumerate(map_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                pairs.append((obj["path"], obj["caption"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConfigError(f"{map_file}:{n}: expected {{'path': ..., 'caption': ...}} ({e})") from e
    out: dict[Path, str] = {}
    for p, cap in pairs:
        path = Path(p).expanduser()
        out[(path if path.is_absolute() else base / path).resolve()] = str(cap).strip()
    return out


def read_sidecar(video: Path) -> str | None:
    """The caption in ``VIDEO.txt`` or ``VIDEO.json`` (key ``caption``) next to ``video``."""
    txt = video.with_suffix(".txt")
    if txt.is_file():
        text = txt.read_text(encoding="utf-8").strip()
        return text or None
    js = video.with_suffix(".json")
    if js.is_file():
        try:
            obj = json.loads(js.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{js}: not valid JSON ({e}); expected {{'caption': ...}}") from e
        cap = obj.get("caption") if isinstance(obj, dict) else obj if isinstance(obj, str) else None
        return str(cap).strip() or None if cap is not None else None
    return None


class SidecarCaptioner:
    """Captions from a map file first, then from sidecar files next to the video."""

    def __init__(self, cfg: CaptionConfig):
        self.map = read_caption_map(cfg.map_file) if cfg.map_file else {}

    def __call__(self, requests: Sequence[CaptionRequest]) -> list[str | None]:
        cache: dict[Path, str | None] = {}
        out = []
        for r in requests:
            if r.source not in cache:
                cap = self.map.get(r.source.resolve())
                cache[r.source] = cap if cap else read_sidecar(r.source)
            out.append(cache[r.source])
        return out


def _no_captions(requests: Sequence[CaptionRequest]) -> list[str | None]:
    return [None] * len(requests)


# ----------------------------------------------------------------------------- vlm


def _resize_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    import cv2

    _, h, w, _ = frames.shape
    scale = short / min(h, w)
    if abs(scale - 1.0) < 1e-6:
        return frames
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


class VLMCaptioner:
    """A local transformers vision-language model captioning clips from sampled frames."""

    def __init__(self, cfg: CaptionConfig):
        import torch
        import transformers
        from transformers import AutoProcessor

        caption_preflight(cfg)
        self.cfg = cfg
        path = str(Path(cfg.model_path).expanduser())
        # NOTE: trust_remote_code=False: a folder's own Python code is refused, never offered on a prompt.
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            # NOTE: decoder-only generation of a padded batch needs left padding.
            tok.padding_side = "left"
        # NOTE: AutoModelForImageTextToText is the transformers >= 4.50 name; older versions
        # only have AutoModelForVision2Seq.
        auto = getattr(transformers, "AutoModelForImageTextToText", None)
        auto = auto or transformers.AutoModelForVision2Seq
        dtype = getattr(torch, cfg.dtype)
        model = auto.from_pretrained(path, local_files_only=True, dtype=dtype, trust_remote_code=False)
        self.model = model.to(cfg.device).eval()

    def _prompt(self) -> str:
        content = [{"type": "image"} for _ in range(self.cfg.num_frames)]
        content.append({"type": "text", "text": self.cfg.prompt})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def __call__(self, requests: Sequence[CaptionRequest]) -> list[str | None]:
        import torch
        from PIL import Image

        prompt = self._prompt()
        out: list[str | None] = []
        for i in range(0, len(requests), self.cfg.batch_size):
            chunk = requests[i : i + self.cfg.batch_size]
            images = []
            for r in chunk:
                frames = _resize_short_side(r.frames(self.cfg.num_frames), self.cfg.frame_short_side)
                images.append([Image.fromarray(f) for f in frames])
            inputs = self.processor(
                text=[prompt] * len(chunk), images=images, padding=True, return_tensors="pt"
            ).to(self.cfg.device)
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False
                )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]  # (B, new)
            texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
            out.extend(t.strip() or None for t in texts)
        return out


def build_captioner(cfg: CaptionConfig) -> Captioner:
    """The captioner ``cfg.method`` names (loads the VLM for ``vlm``)."""
    if cfg.method == "none":
        return _no_captions
    if cfg.method == "sidecar":
        return SidecarCaptioner(cfg)
    return VLMCaptioner(cfg)


def sample_indices(num_frames: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly over ``num_frames`` (centres of ``n`` equal parts)."""
    if num_frames <= 0:
        return []
    return [min(num_frames - 1, int((k + 0.5) * num_frames / n)) for k in range(n)]
