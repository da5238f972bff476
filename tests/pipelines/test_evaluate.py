"""`vdiff eval` end to end: score, write outputs, compare two runs, clear errors."""

from __future__ import annotations

import json

import numpy as np

from pipelines.cli import main as vdiff
from vdiff.io.video import write_mp4


def make_videos(folder, *, moving: bool):
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    frames = np.stack([np.roll(base, 3 * t * moving, axis=1)[:64, :64] for t in range(12)])
    write_mp4(folder / "a clip-0.mp4", frames, fps=8)


def test_vdiff_eval_writes_results_report_and_config(tmp_path, capsys):
    make_videos(tmp_path / "v", moving=True)
    rc = vdiff(
        [
            "eval",
            str(tmp_path / "v"),
            "--out",
            str(tmp_path / "o"),
            "--dimensions",
            "dynamic_degree",
            "--quiet",
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "o" / "eval_results.json").read_text())
    assert results == {}  # a substitute is never in the file VBench's score script reads
    subs = json.loads((tmp_path / "o" / "__vdiff__" / "substitute_results.json").read_text())
    assert list(subs) == ["dynamic_degree"]
    assert (tmp_path / "o" / "report.html").is_file()
    assert "dimensions:\n- dynamic_degree" in (tmp_path / "o" / "config.yaml").read_text()
    assert "dynamic_degree" in capsys.readouterr().out


def test_vdiff_eval_compare(tmp_path, capsys):
    make_videos(tmp_path / "va", moving=True)
    make_videos(tmp_path / "vb", moving=False)
    for name in ("a", "b"):
        args = [
            "eval",
            str(tmp_path / f"v{name}"),
            "--out",
            str(tmp_path / name),
            "flow=farneback",
            "--quiet",
        ]
        assert vdiff([*args, "--dimensions", "dynamic_degree"]) == 0
    capsys.readouterr()
    assert vdiff(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dynamic_degree" in out and "-1.0000" in out
    assert (tmp_path / "compare.html").is_file()


def test_vdiff_eval_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VDIFF_CLIP_B32", raising=False)
    make_videos(tmp_path / "v", moving=False)
    args = ["eval", str(tmp_path / "v"), "--out", str(tmp_path / "o")]
    assert vdiff([*args, "--dimensions", "background_consistency"]) == 2
    assert "VDIFF_CLIP_B32" in capsys.readouterr().err
    assert vdiff([*args, "flw=dis"]) == 2
    assert "did you mean flow" in capsys.readouterr().err


def test_vdiff_eval_refuses_empty_mismatched_or_unreadable_folders(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    out = ["--out", str(tmp_path / "o"), "--dimensions", "dynamic_degree", "--quiet"]
    assert vdiff(["eval", str(tmp_path / "empty"), *out]) == 2
    assert "holds no video" in capsys.readouterr().err
    make_videos(tmp_path / "v", moving=True)  # "a clip-0.mp4"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog running\n")
    assert vdiff(["eval", str(tmp_path / "v"), "--prompts", str(prompts), *out, "videos_per_prompt=1"]) == 2
    err = capsys.readouterr().err
    assert "holds none of the 1 videos --prompts" in err and "'a dog running-0.mp4'" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a-0.mp4").write_bytes(b"\x00not a video" * 10)
    assert vdiff(["eval", str(tmp_path / "bad"), *out]) == 2
    assert "no video in" in capsys.readouterr().err.splitlines()[-1]
    (tmp_path / "file").write_text("x")
    assert vdiff(["eval", str(tmp_path / "v"), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    # a folder named like an override is the VIDEOS input
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v").rename(tmp_path / "take=2")
    assert vdiff(["eval", "take=2", *out]) == 0


def test_vdiff_eval_compare_warns_when_formulas_or_weights_differ(tmp_path, capsys):
    make_videos(tmp_path / "v", moving=True)
    for name in ("a", "b"):
        args = ["eval", str(tmp_path / "v"), "--out", str(tmp_path / name), "--quiet", "--workers", "2"]
        assert vdiff([*args, "--dimensions", "dynamic_degree"]) == 0
    capsys.readouterr()
    compare = ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path)]
    assert vdiff(compare) == 0
    assert "warning" not in capsys.readouterr().err
    # Run B as if scored with another formula and other weights.
    info_b = next(p for p in (tmp_path / "b").rglob("eval_info.json"))
    info = json.loads(info_b.read_text())
    dim = info["dimensions"]["dynamic_degree"]
    assert dim["formula"]["method"] == dim["method"] and dim["ci95"] is None  # one video: no interval
    dim["formula"]["method"] = dim["method"] = "VBench dynamic_degree.py @ 11abda97, other"
    dim["weights"] = {"weights.raft": {"path": "/w/raft-things.pth", "sha256": {"raft-things.pth": "00"}}}
    info_b.write_text(json.dumps(info))
    assert vdiff(compare) == 0
    err = capsys.readouterr().err
    assert "warning: dynamic_degree: different methods" in err
    assert "warning: dynamic_degree: only run B used weights weights.raft" in err
    assert "different methods" in (tmp_path / "compare.html").read_text()
