"""The demo's synthetic "moving shapes" world: coloured shapes crossing plain backgrounds.

Every video shows one shape of one colour moving in one direction over a plain, mildly
textured, low-saturation background, and has a sidecar caption ``VIDEO.txt`` such as
``"a red circle moving left"`` (the format ``vdiff curate``'s ``caption.method=sidecar``
reads). A fixed set of colour × shape × direction combinations is held out of training: each
colour, shape and direction appears in training, but never in those combinations, so a model
that scores well on them has learned to compose the words rather than to memorise captions.

``python -m data_prep.demo_world --out DIR`` writes ``DIR/train/*.mp4`` (+ ``.txt``),
``DIR/heldout/*.mp4`` (+ ``.txt``, ground truth for the metrics) and ``DIR/world.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from vdiff.io.files import atomic_write_json, atomic_write_text
from vdiff.io.video import write_mp4

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 195, 60),
    "blue": (45, 80, 235),
    "yellow": (240, 220, 40),
}
"""Shape colours (RGB); saturated and far apart in hue so a blurry sample is still classifiable."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Shape names; triangles point up."""

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Direction names and their unit (dx, dy) in image coordinates (y grows downwards)."""


@dataclass(frozen=True)
class Combo:
    """One colour × shape × direction combination."""

    color: str
    shape: str
    direction: str

    @property
    def caption(self) -> str:
        """The sidecar caption, e.g. ``"a red circle moving left"``."""
        return f"a {self.color} {self.shape} moving {self.direction}"


def all_combinations() -> list[Combo]:
    """Every colour × shape × direction combination, in a fixed order."""
    return [Combo(c, s, d) for c, s, d in itertools.product(PALETTE, SHAPES, DIRECTIONS)]


def held_out_combinations(n: int = 8) -> list[Combo]:
    """``n`` combinations kept out of training; each colour, shape and direction recurs among them.

    NOTE: combination i takes colour i mod 4, shape i mod 3 and direction (i + i // 4) mod 4,
    so the held-out set cycles through every word while staying a small fraction of the 48.
    """
    colors, directions = list(PALETTE), list(DIRECTIONS)
    if not 1 <= n <= 12:
        raise ValueError(f"held_out={n}: choose 1..12 held-out combinations (of {len(all_combinations())})")
    return [Combo(colors[i % 4], SHAPES[i % 3], directions[(i + i // 4) % 4]) for i in range(n)]


def train_combinations(held_out: list[Combo]) -> list[Combo]:
    """Every combination not in ``held_out``."""
    return [c for c in all_combinations() if c not in set(held_out)]


def parse_caption(text: str) -> Combo | None:
    """Inverse of :attr:`Combo.caption`; None when ``text`` is not a demo-world caption."""
    words = text.strip().lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving":
        return None
    combo = Combo(words[1], words[2], words[4])
    return combo if combo in set(all_combinations()) else None


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A plain low-saturation background with mild smooth texture, (H, W, 3) float32."""
    grey = rng.uniform(60, 140)
    tint = rng.uniform(-18, 18, 3)
    base = np.clip(grey + tint, 0, 255).astype(np.float32)  # (3,)
    small = rng.normal(0, 1, (4, 4, 1)).astype(np.float32)
    smooth = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]  # (H, W, 1)
    return base[None, None, :] + 7.0 * smooth


def draw_shape(img: np.ndarray, shape: str, *, cx: float, cy: float, r: float, rgb: tuple[int, ...]) -> None:
    """Draw a filled, antialiased ``shape`` of half-size ``r`` centred at (cx, cy), in place."""
    sh = 4  # NOTE: cv2's fixed-point shift gives sub-pixel positions (16 steps per pixel)
    f = 1 << sh
    color = tuple(float(v) for v in rgb)
    if shape == "circle":
        cv2.circle(img, (round(cx * f), round(cy * f)), round(r * f), color, -1, cv2.LINE_AA, sh)
        return
    if shape == "square":
        s = r * 0.88  # NOTE: a slightly smaller square keeps the three areas comparable
        pts = np.array([[cx - s, cy - s], [cx + s, cy - s], [cx + s, cy + s], [cx - s, cy + s]])
    elif shape == "triangle":
        t = r * 1.15
        pts = np.array([[cx, cy - t], [cx + t, cy + t], [cx - t, cy + t]])
    else:
        raise ValueError(f"shape={shape!r}: choose one of {SHAPES}")
    cv2.fillPoly(img, [np.round(pts * f).astype(np.int32)], color, cv2.LINE_AA, sh)


def render_video(combo: Combo, *, num_frames: int = 16, size: int = 32, seed: int = 0) -> np.ndarray:
    """Render ``combo`` as (T, H, W, 3) uint8 RGB frames of ``size`` × ``size`` pixels.

    The shape (diameter about 30% of the frame) travels 45-60% of the frame along its
    direction, starting at a random offset across it; the background is static.
    """
    if combo.color not in PALETTE or combo.shape not in SHAPES or combo.direction not in DIRECTIONS:
        raise ValueError(f"{combo}: colour, shape or direction is not in the demo world")
    rng = np.random.default_rng(seed)
    bg = background(size, size, rng)
    r = size * rng.uniform(0.14, 0.17)
    travel = size * rng.uniform(0.45, 0.6)
    dx, dy = DIRECTIONS[combo.direction]
    # NOTE: the start is placed so that the whole path keeps the shape inside the frame.
    along0 = size / 2 - travel / 2 + rng.uniform(-0.04, 0.04) * size
    across = size / 2 + rng.uniform(-0.18, 0.18) * size
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        a = along0 + travel * t / max(num_frames - 1, 1)
        pos = a if (dx + dy) > 0 else size - a  # distance along the axis in the moving direction
        cx, cy = (pos, across) if dx != 0 else (across, pos)
        img = bg.copy()
        draw_shape(img, combo.shape, cx=cx, cy=cy, r=r, rgb=PALETTE[combo.color])
        frames[t] = np.clip(img + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
    return frames


@dataclass(frozen=True)
class WorldItem:
    """One written video: its split, path (relative to the world folder) and combination."""

    split: str
    path: str
    color: str
    shape: str
    direction: str
    caption: str


def video_name(combo: Combo, index: int) -> str:
    """File stem of the ``index``-th video of ``combo``, e.g. ``red-circle-left-003``."""
    return f"{combo.color}-{combo.shape}-{combo.direction}-{index:03d}"


def generate_world(
    out_dir: str | Path,
    *,
    videos_per_combo: int = 6,
    heldout_videos_per_combo: int = 2,
    held_out: int = 8,
    num_frames: int = 16,
    size: int = 32,
    fps: float = 8.0,
    seed: int = 0,
) -> list[WorldItem]:
    """Write the training and held-out videos with sidecar captions, and ``world.json``."""
    out = Path(out_dir)
    heldout = held_out_combinations(held_out)
    plan = [("train", c, videos_per_combo) for c in train_combinations(heldout)]
    plan += [("heldout", c, heldout_videos_per_combo) for c in heldout]
    items: list[WorldItem] = []
    for k, (split, combo, n) in enumerate(plan):
        for i in range(n):
            rel = f"{split}/{video_name(combo, i)}.mp4"
            frames = render_video(combo, num_frames=num_frames, size=size, seed=seed * 100_003 + k * 1000 + i)
            write_mp4(out / rel, frames, fps, crf=12)
            atomic_write_text((out / rel).with_suffix(".txt"), combo.caption + "\n")
            items.append(WorldItem(split, rel, combo.color, combo.shape, combo.direction, combo.caption))
    atomic_write_json(
        out / "world.json",
        {
            "num_frames": num_frames,
            "size": size,
            "fps": fps,
            "seed": seed,
            "held_out": [asdict(c) for c in heldout],
            "videos": [asdict(it) for it in items],
        },
    )
    return items


def load_world(world_dir: str | Path) -> dict:
    """Read ``world.json``; a clear error when the folder was not written by :func:`generate_world`."""
    p = Path(world_dir) / "world.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist; generate the world with python -m data_prep.demo_world")
    return json.loads(p.read_text())


def main(argv: list[str] | None = None) -> int:
    """``python -m data_prep.demo_world --out DIR``: write the demo world."""
    ap = argparse.ArgumentParser(prog="python -m data_prep.demo_world", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder to write train/, heldout/ and world.json into")
    ap.add_argument("--videos-per-combo", type=int, default=6, help="training videos per combination")
    ap.add_argument("--heldout-videos-per-combo", type=int, default=2, help="held-out videos per combination")
    ap.add_argument("--held-out", type=int, default=8, help="number of held-out combinations (of 48)")
    ap.add_argument("--frames", type=int, default=16, help="frames per video")
    ap.add_argument("--size", type=int, default=32, help="frame width and height in pixels")
    ap.add_argument("--fps", type=float, default=8.0, help="frames per second")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    a = ap.parse_args(argv)
    items = generate_world(
        a.out,
        videos_per_combo=a.videos_per_combo,
        heldout_videos_per_combo=a.heldout_videos_per_combo,
        held_out=a.held_out,
        num_frames=a.frames,
        size=a.size,
        fps=a.fps,
        seed=a.seed,
    )
    n_train = sum(it.split == "train" for it in items)
    print(f"wrote {n_train} training and {len(items) - n_train} held-out videos to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
