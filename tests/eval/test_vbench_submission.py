"""A zipped ``vdiff eval`` folder read by the rules of VBench's ``scripts/cal_final_score.py``.

The rules, as ``submission()`` in cal_final_score.py @ 1973f54a reads a zip (re-stated here, not
copied):

1. The zip is extracted into a folder ``MODEL_NAME/``.
2. Each entry of ``os.listdir(MODEL_NAME)`` whose name starts with ``.`` or ``__`` is skipped.
3. An entry that is a folder: each file directly inside it whose name ends with ``.json`` is
   loaded (no skip rule one level down, nothing deeper).
4. An entry that is a file whose name ends with ``json`` is loaded.
5. A loaded JSON that is an object: for every key, ``data[key.replace("_", " ")] = value[0]``
   (so any other object, e.g. ``{"dimensions": {...}}``, raises ``KeyError: 0``). Others are ignored.
6. Every dimension of constant.py's TASK_INFO still absent is set to 0, without a warning.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from eval import evaluate
from eval.vbench import OUTPUT_LAYOUT, SCORE_SCRIPT_DIMENSIONS

TASK_INFO = [d.replace("_", " ") for d in SCORE_SCRIPT_DIMENSIONS]


def read_like_cal_final_score(zip_file: Path, model_dir: Path) -> dict[str, Any]:
    """Rules 1-6 above."""
    with zipfile.ZipFile(zip_file) as z:
        z.extractall(model_dir)
    data: dict[str, Any] = {}

    def load(path: str) -> None:
        with open(path) as f:
            obj = json.load(f)
        if isinstance(obj, dict):
            for key in obj:
                data[key.replace("_", " ")] = obj[key][0]

    for name in os.listdir(model_dir):
        if name.startswith(".") or name.startswith("__"):
            continue
        path = os.path.join(model_dir, name)
        if os.path.isdir(path):
            for sub in os.listdir(path):
                if sub.endswith(".json"):
                    load(os.path.join(path, sub))
        elif path.endswith("json"):
            load(path)
    for key in TASK_INFO:
        data.setdefault(key, 0)
    return data


def zip_folder(folder: Path, zip_path: Path, *, with_folder: bool) -> Path:
    """Zip the folder's contents at the root, or the folder itself (``zip -r out.zip DIR``)."""
    with zipfile.ZipFile(zip_path, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder.parent if with_folder else folder)
                z.write(p, rel.as_posix())
    return zip_path


def vbench_flicker_cv2(path: Path) -> float:
    """VBench's temporal_flickering value for one video, reading it with cv2 as VBench does."""
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    maes = [np.mean(cv2.absdiff(np.float32(a), np.float32(b))) for a, b in itertools.pairwise(frames)]
    return (255.0 - np.mean(np.array(maes)).item()) / 255.0


@pytest.mark.parametrize("with_folder", [False, True])
def test_zipped_output_reads_with_plain_keys_and_vbench_values(videos_dir, tmp_path, with_folder):
    out = tmp_path / "eval_out"
    res = evaluate(videos_dir, out, dimensions=["temporal_flickering", "dynamic_degree"], progress=False)
    data = read_like_cal_final_score(
        zip_folder(out, tmp_path / "sub.zip", with_folder=with_folder), tmp_path / "model"
    )
    # temporal_flickering under its own key, with VBench's value (every video it was given).
    readable = sorted(p for p in videos_dir.iterdir() if "broken" not in p.name)
    want = float(np.mean([vbench_flicker_cv2(p) for p in readable]))
    assert data["temporal flickering"] == pytest.approx(want, abs=1e-12)
    # No substitute is read by the script: dynamic_degree (no RAFT weights) sits in __vdiff__/,
    # the script sees only its absent key, and vdiff says so in eval_info.json.
    assert set(data) == set(TASK_INFO)
    assert data["dynamic degree"] == 0
    assert "dynamic_degree" in res["substitutes"] and "dynamic_degree" not in res["results"]
    assert "dynamic_degree" in res["info"]["score_script_zeros"]
    assert "temporal_flickering" not in res["info"]["score_script_zeros"]


def test_layout_keeps_non_results_where_the_script_skips_them(videos_dir, tmp_path):
    out = tmp_path / "o"
    evaluate(videos_dir, out, dimensions=["temporal_flickering", "dynamic_degree"], progress=False)
    jsons = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.name.endswith("json")}
    assert jsons == {OUTPUT_LAYOUT["results"], OUTPUT_LAYOUT["info"], OUTPUT_LAYOUT["substitutes"]}
    assert all(k.startswith("__") for k in jsons - {OUTPUT_LAYOUT["results"]})
    results = json.loads((out / "eval_results.json").read_text())
    assert all(k in SCORE_SCRIPT_DIMENSIONS for k in results)


def test_reader_reproduces_the_reported_crash_on_the_old_layout(tmp_path):
    # The layout of issue 16: eval_info.json at the top level makes the script fail with KeyError: 0.
    old = tmp_path / "old"
    old.mkdir()
    (old / "eval_results.json").write_text(json.dumps({"dynamic_degree:substitute": [0.5, []]}))
    (old / "eval_info.json").write_text(json.dumps({"dimensions": {"dynamic_degree": {}}}))
    with pytest.raises(KeyError):
        read_like_cal_final_score(zip_folder(old, tmp_path / "old.zip", with_folder=False), tmp_path / "m")
