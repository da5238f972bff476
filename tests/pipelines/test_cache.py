"""`vdiff cache`: cached shards hold the training latents/embeddings, resume, and train identically."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors.torch import load as load_safetensors

from data_prep.synthetic import moving_shapes, shape_caption
from pipelines.cache import main
from pipelines.train import main as train_main
from pipelines.train import train
from vdiff.config import load_config
from vdiff.data import DataConfig, ShardLoader, index_shard, list_shards, load_raw_sample, read_sample
from vdiff.encoders import TextEncoderConfig, build_text_encoder, build_vae
from vdiff.io.outdir import LOCK_NAME, out_dir_lock
from vdiff.io.video import encode_mp4
from vdiff.training import TrainConfig

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
SIZES = ["data.num_frames=4", "data.height=16", "data.width=16", "text.max_length=8"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 captioned moving-shape clips (10 frames, 20x24 at 8 fps) in two WebDataset shards."""
    root = tmp_path_factory.mktemp("raw")
    (root / "shards").mkdir()
    specs = [("red", "circle", "left"), ("blue", "square", "right"), ("green", "triangle", "up"),
             ("white", "circle", "down")]  # fmt: skip
    for s in range(2):
        with wds.TarWriter(str(root / "shards" / f"shard-{s:06d}.tar")) as w:
            for i in (2 * s, 2 * s + 1):
                frames = moving_shapes(*specs[i], num_frames=10, height=20, width=24, fps=8.0, seed=i)
                meta = {
                    "caption": shape_caption(*specs[i]),
                    "fps": 8.0,
                    "num_frames": 10,
                    "width": 24,
                    "height": 20,
                }
                w.write({"__key__": f"clip-{i}", "mp4": encode_mp4(frames, 8.0), "json": json.dumps(meta)})
    return root


@pytest.fixture(scope="module")
def cached(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    assert main([str(raw), "--out", str(out), "--config", str(CONFIG), *SIZES, "batch_size=3"]) == 0
    return out


def test_cached_shards_hold_what_training_would_compute(raw: Path, cached: Path) -> None:
    assert [p.name for p in list_shards(cached)] == ["shard-000000.tar", "shard-000001.tar"]
    data = DataConfig(path=str(raw), num_frames=4, fps=8.0, height=16, width=16)
    vae = build_vae(load_config(TrainConfig, CONFIG).vae)
    text = build_text_encoder(TextEncoderConfig(max_length=8))
    for raw_ref, ref in zip(index_shard(list_shards(raw)[1]), index_shard(list_shards(cached)[1])):
        assert ref.key == raw_ref.key and set(ref.members) == {"safetensors", "json"}
        payload = read_sample(ref)
        tensors = load_safetensors(payload["safetensors"])
        sample = load_raw_sample(raw_ref, data)
        # pixel AE is exact; the text encoder sees the same prompt (batched with others in the cache)
        assert torch.equal(tensors["latents"], vae.encode(sample["video"][None])[0])
        assert tensors["latents"].shape == (48, 4, 4, 4)
        torch.testing.assert_close(
            tensors["context"], text.encode([sample["caption"]])[0], rtol=1e-5, atol=1e-5
        )
        meta = json.loads(payload["json"])
        assert meta["caption"] == sample["caption"] and meta["cache"]["data"]["num_frames"] == 4
    empty = load_safetensors((cached / "empty_prompt.safetensors").read_bytes())["context"]
    torch.testing.assert_close(empty, text.encode([""])[0], rtol=1e-5, atol=1e-5)
    assert ShardLoader(DataConfig(path=str(cached)), batch_size=2).kind == "cached"


def test_cache_resumes_and_refuses_other_settings(
    raw: Path, cached: Path, capsys: pytest.CaptureFixture
) -> None:
    first, second = list_shards(cached)
    before = second.read_bytes()
    first.unlink()
    (first.parent / ".shard-000000.tar.abc.tmp").write_bytes(b"partial")  # left by a killed run
    stamp = second.stat().st_mtime_ns
    assert main([str(raw), "--out", str(cached), "--config", str(CONFIG), *SIZES, "batch_size=3"]) == 0
    assert first.is_file() and second.stat().st_mtime_ns == stamp and second.read_bytes() == before
    assert not list(first.parent.glob(".*.tmp"))
    assert main([str(raw), "--out", str(cached), "--config", str(CONFIG), *SIZES, "data.height=8"]) == 2
    assert "other data/vae/text settings" in capsys.readouterr().err


def test_training_on_cache_matches_raw_training(raw: Path, cached: Path, tmp_path: Path) -> None:
    common = [*SIZES, "train.steps=3", "train.batch_size=2", "train.log_every=1", "train.device=cpu",
              "flow.caption_dropout=0.5", "data.shuffle=true"]  # fmt: skip
    losses = []
    for name, data in (("raw", raw), ("cached", cached)):
        cfg = load_config(TrainConfig, CONFIG, [*common, f"data.path={data}", f"run_dir={tmp_path / name}"])
        run = train(cfg)
        losses.append([json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()])
    # NOTE: identical maths on identical inputs; only the text encoder's batching differs (≤ 1e-5 relative)
    assert len(losses[0]) == 3
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)


def test_third_party_shards_cache_and_train_like_curated_ones(
    raw: Path, cached: Path, tmp_path: Path
) -> None:
    """video2dataset-style copies of the raw shards (.mp4, .txt, a foreign .json): same cache, same losses."""
    v2d = tmp_path / "v2d"
    v2d.mkdir()
    for shard in list_shards(raw):
        with tarfile.open(v2d / shard.name, "w") as tar:
            for ref in index_shard(shard):
                payload = read_sample(ref)
                foreign = {"url": f"https://example.com/{ref.key}.mp4", "status": "success"}
                caption = json.loads(payload["json"])["caption"]
                for ext, data in (
                    ("mp4", payload["mp4"]),
                    ("txt", caption.encode()),
                    ("json", json.dumps(foreign).encode()),
                ):
                    info = tarfile.TarInfo(f"{ref.key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "cache"
    assert main([str(v2d), "--out", str(out), "--config", str(CONFIG), *SIZES, "batch_size=3"]) == 0
    for shard, curated in zip(list_shards(out), list_shards(cached)):
        for ref, other in zip(index_shard(shard), index_shard(curated)):
            mine, theirs = read_sample(ref), read_sample(other)
            a, b = load_safetensors(mine["safetensors"]), load_safetensors(theirs["safetensors"])
            assert torch.equal(a["latents"], b["latents"])
            torch.testing.assert_close(a["context"], b["context"], rtol=1e-5, atol=1e-5)
            meta, want = json.loads(mine["json"]), json.loads(theirs["json"])
            assert meta["url"] == f"https://example.com/{ref.key}.mp4"  # the foreign keys are kept
            for key in ("caption", "num_frames", "fps", "width", "height"):  # probed, as curate states them
                assert meta[key] == want[key], key

    # `vdiff train` takes the third-party shards and sees the same clips and captions.
    common = [str(CONFIG), *SIZES, "train.steps=2", "train.batch_size=2", "train.log_every=1",
              "train.device=cpu", "data.shuffle=true"]  # fmt: skip
    losses = []
    for name, data in (("curated", raw), ("v2d", v2d)):
        assert train_main([*common, f"data.path={data}", f"run_dir={tmp_path / name}"]) == 0
        metrics = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(line)["loss"] for line in metrics])
    assert len(losses[0]) == 2 and losses[1] == losses[0]


def test_cache_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0 and "vae.kind" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 2 and "--out" in capsys.readouterr().err
    assert main([str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # no source shard: an error before --out is touched


def test_training_refuses_a_cache_made_with_other_encoders(cached: Path, tmp_path: Path) -> None:
    cfg = load_config(
        TrainConfig, CONFIG, [*SIZES, f"data.path={cached}", f"run_dir={tmp_path}", "text.max_length=12"]
    )
    with pytest.raises(ValueError, match="was cached with text="):
        train(cfg)


def latents(cache_dir: Path) -> dict[str, torch.Tensor]:
    """key -> cached latents of every sample of a cache."""
    out = {}
    for shard in list_shards(cache_dir):
        for ref in index_shard(shard):
            out[f"{shard.name}/{ref.key}"] = load_safetensors(read_sample(ref)["safetensors"])["latents"]
    return out


def rewrite_shard(path: Path, seed: int) -> None:
    """Replace a raw shard's clips by other moving shapes (same keys, other pixels)."""
    with wds.TarWriter(str(path)) as w:
        for ref in index_shard(path.with_name(path.name + ".orig")):
            frames = moving_shapes(
                "yellow", "square", "down", num_frames=10, height=20, width=24, fps=8.0, seed=seed
            )
            meta = json.loads(read_sample(ref)["json"])
            w.write({"__key__": ref.key, "mp4": encode_mp4(frames, 8.0), "json": json.dumps(meta)})


def test_cache_of_changed_source_shards_is_refused_and_replace_recaches_only_those(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, out = tmp_path / "raw", tmp_path / "cache"
    shutil.copytree(raw, data)
    args = [str(data), "--out", str(out), "--config", str(CONFIG), *SIZES]
    assert main(args) == 0
    first, second = (out / "shards" / name for name in ("shard-000000.tar", "shard-000001.tar"))
    kept, stamp = first.read_bytes(), first.stat().st_mtime_ns
    before = latents(out)
    cached_bytes = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    source = data / "shards" / "shard-000001.tar"
    source.rename(source.with_name(source.name + ".orig"))
    rewrite_shard(source, seed=7)  # the same shard name now holds other clips
    capsys.readouterr()
    assert main(args) == 2
    assert "cache of other source shards (1 changed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == cached_bytes

    assert main([*args, "--replace"]) == 0
    assert first.read_bytes() == kept and first.stat().st_mtime_ns == stamp  # its source did not change
    fresh = tmp_path / "fresh"
    source.with_name(source.name + ".orig").unlink()
    assert main([str(data), "--out", str(fresh), "--config", str(CONFIG), *SIZES]) == 0
    now, want = latents(out), latents(fresh)
    assert now.keys() == want.keys() and all(torch.equal(now[k], want[k]) for k in now)
    assert any(not torch.equal(now[k], before[k]) for k in now if k.startswith(second.name))


def test_cache_into_a_folder_it_did_not_write_is_refused_and_overwrite_keeps_other_files(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "mine"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "shard-000000.tar").write_bytes(b"old latents of other data")
    (out / "notes.txt").write_text("mine")
    args = [str(raw), "--out", str(out), "--config", str(CONFIG), *SIZES]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert (out / "shards" / "shard-000000.tar").read_bytes() == b"old latents of other data"

    assert main([*args, "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert len(latents(out)) == 4  # shard-000000.tar was re-encoded, not taken for a finished shard


def test_a_second_cache_run_on_the_same_out_is_refused(raw: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cache"
    with out_dir_lock(out, command="cache"):
        assert main([str(raw), "--out", str(out), "--config", str(CONFIG), *SIZES]) == 2
    assert "in use by another run (vdiff cache, pid" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
