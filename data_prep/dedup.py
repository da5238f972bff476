"""Near-duplicate clips by perceptual hashes of a few frames.

A clip's fingerprint is the 64-bit DCT perceptual hash (``imagehash.phash``) of
``num_frames`` frames spread evenly over it. Two clips are near-duplicates when the hashes of
*every* corresponding frame are within ``hamming_threshold`` bits: re-encoding, mild
resizing, brightening or compression noise move a phash by a few bits; different content
moves it by about half of its 64 bits. The hash sees luminance structure only: clips that
differ just in a small object's colour (a red vs a blue ball on the same background) are
near-duplicates to it.

:class:`Deduper` holds all fingerprints in one process and is deterministic: feed clips in a
fixed order and the same clips are marked, each pointing at the earliest-added kept clip it
duplicates. :func:`keep_order` is that order: the best copy first (highest source resolution,
then source bitrate, then clip length, then clip id), so of a set of near-copies the best one
survives whichever worker finished first. Lookups use a pigeonhole index: the first frame's hash
is split into ``hamming_threshold + 1`` bands, and two hashes within the threshold agree exactly
on at least one band, so only clips sharing a band are compared (exact, not approximate).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class DedupConfig:
    """Near-duplicate removal.

    Of a set of near-duplicates the best copy is kept and the others point at it: highest source
    resolution (width x height) first, then highest source bitrate, then longest clip, then the
    smallest clip id (:func:`keep_priority`).
    """

    enabled: bool = True
    """mark near-duplicates as duplicate, keeping the best copy (resolution, bitrate, length, clip id)"""
    hamming_threshold: int = 10
    """max differing bits (of 64) per frame hash for two clips to count as duplicates"""
    num_frames: int = 4
    """frames hashed per clip, evenly spread"""

    def validate(self) -> None:
        if not 0 <= self.hamming_threshold < 32:
            raise ValueError(f"dedup.hamming_threshold={self.hamming_threshold}: must be in [0, 32)")
        if self.num_frames < 1:
            raise ValueError(f"dedup.num_frames={self.num_frames}: must be at least 1")


def keep_priority(row: Mapping[str, Any]) -> tuple[int, float, float, int, str]:
    """Sort key of a clip row putting the copy to keep first among near-duplicates.

    Highest source resolution (``source_width * source_height``) first, then highest source
    bitrate (``source_bitrate``, bits per second), then the longest clip (``duration``, then
    ``num_frames``), then the smallest ``clip_id``, so ties are broken the same way in every run.
    Missing or null quality fields count as 0 (such a clip loses to any known one).
    """
    area = int(row.get("source_width") or 0) * int(row.get("source_height") or 0)
    bitrate = float(row.get("source_bitrate") or 0.0)
    duration = float(row.get("duration") or 0.0)
    frames = int(row.get("num_frames") or 0)
    return (-area, -bitrate, -duration, -frames, str(row["clip_id"]))


def keep_order(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``rows`` sorted by :func:`keep_priority`: feed them to :class:`Deduper` in this order."""
    return sorted(rows, key=keep_priority)


def frame_phash(frame: np.ndarray) -> int:
    """64-bit perceptual hash (imagehash.phash) of an (h, w, 3) uint8 RGB frame, as an int."""
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(frame)).hash.ravel()  # (64,) bool
    return int("".join("1" if b else "0" for b in bits), 2)


def clip_fingerprint(frames: np.ndarray, *, num_frames: int = 4) -> list[int]:
    """Perceptual hashes of ``num_frames`` frames spread evenly over (T, h, w, 3) ``frames``."""
    if len(frames) == 0:
        raise ValueError("clip_fingerprint: the clip has no frames")
    # NOTE: positions are fractions of the clip (not fixed indices) so copies of a clip at
    # another frame rate sample the same moments.
    idx = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)
    return [frame_phash(frames[i]) for i in idx]


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def fingerprint_distance(a: list[int], b: list[int]) -> int:
    """Largest per-frame Hamming distance between two fingerprints of the same length."""
    if len(a) != len(b):
        raise ValueError(f"fingerprints of different lengths ({len(a)} and {len(b)}) cannot be compared")
    return max(hamming(x, y) for x, y in zip(a, b))


class Deduper:
    """Keeps fingerprints of the clips seen so far; :meth:`check_and_add` finds duplicates."""

    def __init__(self, cfg: DedupConfig | None = None):
        self.cfg = cfg or DedupConfig()
        bands = self.cfg.hamming_threshold + 1
        # NOTE: band edges over 64 bits; bands differ in width by at most one bit.
        self._edges = [round(64 * i / bands) for i in range(bands + 1)]
        self._index: list[defaultdict[int, list[int]]] = [defaultdict(list) for _ in range(bands)]
        self._ids: list[str] = []
        self._prints: list[list[int]] = []

    def __len__(self) -> int:
        return len(self._ids)

    def _band_keys(self, h: int) -> list[int]:
        return [(h >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in zip(self._edges, self._edges[1:])]

    def find(self, fingerprint: list[int]) -> str | None:
        """The earliest-added clip within the threshold of ``fingerprint``, or None.

        Fed in :func:`keep_order`, the earliest-added match is the best kept copy.
        """
        if not fingerprint:
            raise ValueError("Deduper: empty fingerprint")
        candidates: set[int] = set()
        for band, key in enumerate(self._band_keys(fingerprint[0])):
            candidates.update(self._index[band].get(key, ()))
        for k in sorted(candidates):
            if fingerprint_distance(self._prints[k], fingerprint) <= self.cfg.hamming_threshold:
                return self._ids[k]
        return None

    def add(self, clip_id: str, fingerprint: list[int]) -> None:
        """Remember ``clip_id``'s fingerprint as a clip later ones may duplicate."""
        k = len(self._ids)
        self._ids.append(clip_id)
        self._prints.append(list(fingerprint))
        for band, key in enumerate(self._band_keys(fingerprint[0])):
            self._index[band][key].append(k)

    def check_and_add(self, clip_id: str, fingerprint: list[int]) -> str | None:
        """Return the clip id ``clip_id`` duplicates, or None after adding it as a new clip.

        A duplicate is not added, so chains (A ~ B ~ C with A !~ C) stay anchored on kept clips.
        """
        dup = self.find(fingerprint)
        if dup is None:
            self.add(clip_id, fingerprint)
        return dup


def duplicates_of(rows: Iterable[Mapping[str, Any]], cfg: DedupConfig | None = None) -> dict[str, str]:
    """``{clip_id: clip_id of the kept copy}`` for every near-duplicate among ``rows``.

    Each row has ``clip_id``, ``fingerprint`` and the :func:`keep_priority` fields. Rows are fed
    to a :class:`Deduper` in :func:`keep_order`, so the best copy of each set survives and the
    result does not depend on the order of ``rows``; every value is a clip that is kept.
    """
    deduper = Deduper(cfg)
    found: dict[str, str] = {}
    for r in keep_order(rows):
        dup = deduper.check_and_add(r["clip_id"], r["fingerprint"])
        if dup is not None:
            found[r["clip_id"]] = dup
    return found
