"""Small shared types of the curation stages: the status every clip ends with."""

from __future__ import annotations

from typing import Literal, get_args

ClipStatus = Literal[
    "kept", "too_static", "too_fast", "too_short", "blurry", "dark", "too_small", "duplicate"
]
"""Why a clip was kept or dropped; one per clip in the manifest."""

CLIP_STATUSES: tuple[str, ...] = get_args(ClipStatus)
"""All statuses, in report order."""

MotionStatus = Literal["too_static", "too_fast"]
"""Statuses :func:`data_prep.motion.classify_motion` can return."""

QualityStatus = Literal["too_small", "blurry", "dark"]
"""Statuses :func:`data_prep.quality.assess_quality` can return."""
