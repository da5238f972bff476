"""Captions: sidecar files and maps, preflight errors, and a local VLM (tiny LLaVA built offline)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep.captions import (
    CaptionConfig,
    CaptionRequest,
    SidecarCaptioner,
    VLMCaptioner,
    build_captioner,
    caption_preflight,
    sample_indices,
)
from vdiff.config import ConfigError

# NOTE: the crafted-file helpers live in the checkpoint tests' conftest; import it as a module.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _request(source: Path, frames: np.ndarray | None = None, clip_id: str = "c") -> CaptionRequest:
    return CaptionRequest(clip_id=clip_id, source=source, frames=lambda n: frames[:n])


def test_sidecar_txt_and_json_next_to_the_video(tmp_path):
    (tmp_path / "a.txt").write_text("  a dog runs on a beach \n")
    (tmp_path / "b.json").write_text(json.dumps({"caption": "a cat sleeps"}))
    cap = SidecarCaptioner(CaptionConfig())
    out = cap([_request(tmp_path / "a.mp4"), _request(tmp_path / "b.mkv"), _request(tmp_path / "c.mp4")])
    assert out == ["a dog runs on a beach", "a cat sleeps", None]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_map_file_paths_are_relative_to_the_map_and_win_over_sidecars(tmp_path, fmt):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.txt").write_text("sidecar caption")
    pairs = [("videos/a.mp4", "a, mapped caption"), (str(tmp_path / "videos" / "b.mp4"), "absolute entry")]
    if fmt == "csv":
        lines = ["path,caption", *(f'{p},"{c}"' for p, c in pairs)]
    else:
        lines = [json.dumps({"path": p, "caption": c}) for p, c in pairs]
    (tmp_path / f"map.{fmt}").write_text("\n".join(lines) + "\n")
    cfg = CaptionConfig(map_file=str(tmp_path / f"map.{fmt}"))
    caption_preflight(cfg)
    out = build_captioner(cfg)([_request(tmp_path / "videos" / n) for n in ("a.mp4", "b.mp4", "c.mp4")])
    assert out == ["a, mapped caption", "absolute entry", None]


def test_csv_map_without_the_header_is_a_clear_error(tmp_path):
    (tmp_path / "map.csv").write_text("a.mp4,hello\n")
    with pytest.raises(ConfigError, match="path,caption"):
        SidecarCaptioner(CaptionConfig(map_file=str(tmp_path / "map.csv")))


def test_preflight_names_the_missing_model_or_map(tmp_path):
    with pytest.raises(ConfigError, match=r"caption\.model_path=DIR"):
        caption_preflight(CaptionConfig(method="vlm"))
    with pytest.raises(ConfigError, match=r"no config\.json"):
        caption_preflight(CaptionConfig(method="vlm", model_path=str(tmp_path / "qwen")))
    with pytest.raises(ConfigError, match="does not exist"):
        caption_preflight(CaptionConfig(map_file=str(tmp_path / "map.csv")))
    assert build_captioner(CaptionConfig(method="none"))([_request(tmp_path / "a.mp4")]) == [None]


def test_sample_indices_are_the_centres_of_equal_parts():
    assert sample_indices(8, 4) == [1, 3, 5, 7]
    assert sample_indices(3, 4) == [0, 1, 1, 2]
    assert sample_indices(0, 4) == []


# ----------------------------------------------------------------------------- vlm

WORDS = [
    *("a", "red", "blue", "circle", "square", "moving", "left", "right", "up", "down"),
    *("camera", "pans", "over", "scene", "describe", "this", "clip"),
]


def build_tiny_llava(folder: Path) -> Path:
    """A randomly initialised LLaVA (CLIP vision tower + Llama text) with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", *WORDS]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
    )
    template = (
        "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="full",
        chat_template=template,
        num_additional_image_tokens=1,  # the CLS token, kept by the "full" strategy
    )
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64)
    text.update(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    text.update(max_position_embeddings=256)
    text.update(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    vision.update(num_attention_heads=2, image_size=28, patch_size=14)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def _vlm_cfg(path: Path, **kw) -> CaptionConfig:
    base = dict(method="vlm", model_path=str(path), num_frames=2, frame_short_side=28, max_new_tokens=6)
    return CaptionConfig(**{**base, "prompt": "describe this clip", **kw})


def test_vlm_batched_captions_equal_one_clip_at_a_time_and_a_direct_generate_call(tiny_vlm):
    import cv2
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (2, 28 + 14 * i, 42, 3), dtype=np.uint8) for i in range(3)]
    requests = [_request(Path(f"{i}.mp4"), c, clip_id=str(i)) for i, c in enumerate(clips)]
    batched = VLMCaptioner(_vlm_cfg(tiny_vlm, batch_size=2))(requests)
    single = VLMCaptioner(_vlm_cfg(tiny_vlm, batch_size=1))(requests)
    assert batched == single
    assert all(isinstance(c, str) and c for c in batched)

    # Reference: the processor and generate() called by hand for clip 2, with the frames resized
    # to a 28-pixel short side as frame_short_side asks.
    processor = AutoProcessor.from_pretrained(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "describe this clip"}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}],
        add_generation_prompt=True,
        tokenize=False,
    )
    small = [cv2.resize(f, (28, 37), interpolation=cv2.INTER_AREA) for f in clips[2]]  # (56, 42) -> (37, 28)
    images = [Image.fromarray(f) for f in small]
    inputs = processor(text=[prompt], images=[images], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert batched[2] == expected.strip()


def test_curated_clips_get_the_vlm_caption_of_their_own_frames(tiny_vlm, tmp_path):
    from data_prep import synthetic
    from data_prep.engine import CurateConfig, VideoTask, finalize, prepare_out_dir, process_video
    from data_prep.inputs import expand_inputs
    from data_prep.manifest import read_manifest
    from data_prep.shards import read_shard, sample_mp4_frames

    video = synthetic.write_video(tmp_path / "in" / "red.mp4", synthetic.moving_shapes(num_frames=36), 24.0)
    cfg = CurateConfig(caption=_vlm_cfg(tiny_vlm, batch_size=2))
    cfg.quality.min_width, cfg.quality.min_height = 64, 48
    out = tmp_path / "out"
    prepare_out_dir(out)
    items = expand_inputs([video])
    summary = process_video(VideoTask(index=0, path=video, work_dir=out / "work", cfg=cfg))
    finalize(items, [summary], cfg=cfg, out_dir=out)
    (row,) = read_manifest(out / "manifest.parquet")
    assert row["status"] == "kept" and row["caption"]
    members = dict(read_shard(out / "shards" / row["shard"]))
    frames = sample_mp4_frames(members[f"{row['clip_id']}.mp4"], 2)
    expected = VLMCaptioner(cfg.caption)([_request(video, frames)])[0]
    assert row["caption"] == expected
    assert json.loads(members[f"{row['clip_id']}.json"])["caption"] == expected


def test_a_captioner_folder_with_its_own_code_is_refused_without_asking(tiny_vlm, tmp_path, monkeypatch):
    from tests.vdiff.checkpoint.conftest import custom_code_folder

    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")  # a user who would say yes
    marker = tmp_path / "MARKER"
    folder = custom_code_folder(tiny_vlm, tmp_path / "vlm", marker)
    with pytest.raises(ValueError, match="trust_remote_code"):
        VLMCaptioner(_vlm_cfg(folder))
    assert not marker.exists() and not asked
