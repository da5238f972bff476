"""VBench formats and scoring: prompt suites, video names, ``eval_results.json``, final scores.

Facts taken from VBench (github.com/Vchitect/VBench): the per-dimension min/max
normalisation, the dimension weights and the quality/semantic lists are VBench's published
``scripts/constant.py`` (NORMALIZE_DIC, DIM_WEIGHT, QUALITY_LIST, SEMANTIC_LIST,
QUALITY_WEIGHT=4, SEMANTIC_WEIGHT=1); the formulas are those of ``scripts/cal_final_score.py``:
``normalized = (value - Min) / (Max - Min) * weight``, a group score is the sum of its
normalized values over the sum of its weights, and ``total = (4 * quality + semantic) / 5``.
Video names follow VBench's sampling convention ``{prompt}-{i}.mp4`` (5 per prompt), and a
prompt is recovered from a name by dropping a trailing ``-<number>`` (``get_prompt_from_filename``).

Every formula is pinned to the VBench commit it follows (``VBENCH_COMMITS``); the files were read
at ``VBENCH_HEAD``. ``OUTPUT_LAYOUT`` is where ``vdiff eval`` writes, chosen for the reading rules
of ``scripts/cal_final_score.py`` (see ``score_script_reads``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# NOTE: the VBench commit (github.com/Vchitect/VBench, 2026-03-23) whose files were read.
VBENCH_HEAD = "45e79ec14e69a2187202c675d2dbce1a71843d53"
# The commit that last changed each file a vdiff formula follows, as of VBENCH_HEAD.
VBENCH_COMMITS: dict[str, str] = {
    "scripts/cal_final_score.py": "1973f54a974bac9a966f0032bfca524bfd0f79e2",  # 2024-06-28
    "scripts/constant.py": "884b25ee5249d9fc5c727a9293e58784a8f9a64b",  # 2024-12-31
    "vbench/temporal_flickering.py": "fc4620b4d620114b77842c336f7a193c37e8e12e",  # 2024-07-13
    "vbench/dynamic_degree.py": "f9d345a2064f90709501680c7954945149329d14",  # 2024-12-31
    "vbench/cli/static_filter.py": "986e8884ea399224abc3cfa9606284b6e8d8d3d5",  # 2024-04-17
    "vbench/third_party/RAFT/core/raft.py": "a06572e",  # 2023-12-30 (corr.py too)
    "vbench/utils.py": "e2cacab866e9fe53109d95bc0d136b939b7f7335",  # 2025-02-17
    "vbench/motion_smoothness.py": "24f9d2ab02daf02006d9e95b0ea5e83ee2b01c5d",  # 2025-02-27
    # networks/AMT-S.py, blocks/ifrnet.py, blocks/multi_flow.py (91bece8, 2024-01-23); blocks/raft.py,
    # blocks/feat_enc.py, utils/utils.py, utils/flow_utils.py (d67ebac, 2023-11-30)
    "vbench/third_party/amt/networks/AMT-S.py": "91bece8",  # 2024-01-23
}

# Where ``vdiff eval --out DIR`` writes. cal_final_score.py reads every top-level file whose name
# ends in "json" and every "*.json" one folder down, and skips top-level names starting with "."
# or "__"; so only VBench results are JSON outside the "__vdiff__" folder.
OUTPUT_LAYOUT: dict[str, str] = {
    "results": "eval_results.json",  # dimensions computed as VBench does, under their plain keys
    "info": "__vdiff__/eval_info.json",  # methods, scores, skipped and missing videos
    "substitutes": "__vdiff__/substitute_results.json",  # substitute methods, VBench schema
    "report": "report.html",
    "config": "config.yaml",
}
# Dimension keys of cal_final_score.py (constant.py TASK_INFO), with "_" for " ".
SCORE_SCRIPT_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)

# NOTE: VBench scripts/constant.py, keyed here by the underscore names VBench's
# eval_results.json uses (cal_final_score.py maps "_" -> " " to look them up).
NORMALIZE: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
DIM_WEIGHT: dict[str, float] = {name: 1.0 for name in NORMALIZE} | {"dynamic_degree": 0.5}
QUALITY_LIST: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
)
SEMANTIC_LIST: tuple[str, ...] = (
    "object_class",
    "multiple_objects",
    "human_action",
    "color",
    "spatial_relationship",
    "scene",
    "appearance_style",
    "temporal_style",
    "overall_consistency",
)
QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0
VIDEOS_PER_PROMPT = 5
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


def vbench_video_name(prompt: str, i: int) -> str:
    """The file name VBench expects for sample ``i`` of ``prompt``: ``{prompt}-{i}.mp4``."""
    if not prompt or "/" in prompt or "\x00" in prompt:
        raise ValueError(f"prompt {prompt!r} cannot be a VBench file name (empty, or holds '/' or NUL)")
    if i < 0:
        raise ValueError(f"sample index must be >= 0, got {i}")
    return f"{prompt}-{i}.mp4"


def prompt_from_filename(path: str | Path) -> str:
    """VBench's rule: the file stem without a trailing ``-<number>``."""
    return re.sub(r"-\d+$", "", Path(path).stem)


def load_prompts(path: str | Path) -> list[dict[str, Any]] | dict[str, str]:
    """Read prompts: a VBench suite (JSON list of ``{prompt_en, dimension, auxiliary_info}``),
    a JSON map ``{video file name: prompt}``, or a text file with one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [{"prompt_en": line.strip(), "dimension": []} for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"prompts file {path} is not valid JSON: {e}") from e
    if isinstance(data, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"prompts file {path}: a JSON map must be {{video file name: prompt}}")
        return data
    if not isinstance(data, list) or not all(isinstance(d, dict) and "prompt_en" in d for d in data):
        raise ValueError(
            f"prompts file {path}: expected VBench's format, a JSON list of objects with 'prompt_en' "
            "(and 'dimension', 'auxiliary_info'), or a JSON map {video file name: prompt}"
        )
    for d in data:
        dims = d.get("dimension", [])
        d["dimension"] = [dims] if isinstance(dims, str) else list(dims)
    return data


def normalized_scores(values: dict[str, float]) -> dict[str, float]:
    """VBench's per-dimension normalisation times the dimension weight (known dimensions only)."""
    out = {}
    for name, value in values.items():
        if name in NORMALIZE:
            lo, hi = NORMALIZE[name]
            out[name] = (value - lo) / (hi - lo) * DIM_WEIGHT[name]
    return out


def _group_score(normalized: dict[str, float], names: tuple[str, ...]) -> float | None:
    if any(n not in normalized for n in names):
        return None
    return sum(normalized[n] for n in names) / sum(DIM_WEIGHT[n] for n in names)


def vbench_scores(values: dict[str, float]) -> dict[str, Any]:
    """Quality, semantic and total scores as VBench computes them.

    A group score needs every dimension of its group (``None`` otherwise, with the missing
    names listed); the total needs both groups.
    """
    norm = normalized_scores(values)
    quality = _group_score(norm, QUALITY_LIST)
    semantic = _group_score(norm, SEMANTIC_LIST)
    total = None
    if quality is not None and semantic is not None:
        total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return {
        "normalized": norm,
        "quality_score": quality,
        "semantic_score": semantic,
        "total_score": total,
        "missing_quality": [n for n in QUALITY_LIST if n not in values],
        "missing_semantic": [n for n in SEMANTIC_LIST if n not in values],
    }


def results_entry(aggregate: float, entries: list[dict[str, Any]]) -> list[Any]:
    """One dimension of VBench's ``eval_results.json``: ``[aggregate, [{video_path, video_results}]]``."""
    return [aggregate, entries]


def validate_results(data: Any) -> None:
    """Raise ValueError unless ``data`` is ``{dimension: [aggregate, [{video_path, video_results}]]}``."""
    if not isinstance(data, dict):
        raise ValueError("eval results must be a JSON object {dimension: [aggregate, per-video list]}")
    for dim, value in data.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
            raise ValueError(f"eval results[{dim!r}] must be [aggregate, [per-video results]]")
        if not isinstance(value[0], int | float | bool):
            raise ValueError(f"eval results[{dim!r}][0] must be a number")
        for e in value[1]:
            if not (isinstance(e, dict) and "video_path" in e and "video_results" in e):
                raise ValueError(f"eval results[{dim!r}]: each entry needs video_path and video_results")


def score_script_zeros(results: dict[str, Any]) -> list[str]:
    """The dimensions cal_final_score.py would silently count as 0 for these results (absent keys)."""
    return [d for d in SCORE_SCRIPT_DIMENSIONS if d not in results]
