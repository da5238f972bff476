"""Helpers for the eval tests: synthetic videos with known answers and tiny random models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vdiff.io.video import write_mp4


def texture(seed: int = 0, size: tuple[int, int] = (160, 192)) -> np.ndarray:
    """A smooth random RGB texture (uint8) that optical flow can track."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur((rng.random((*size, 3)) * 255).astype(np.float32), (0, 0), 2)
    return ((tex - tex.min()) / (tex.max() - tex.min()) * 255).astype(np.uint8)


def window(tex: np.ndarray, dx: int, dy: int, size: int = 64) -> np.ndarray:
    return tex[32 + dy : 32 + dy + size, 32 + dx : 32 + dx + size]


def static_frames(n: int = 16, seed: int = 0) -> np.ndarray:
    """(n, 64, 64, 3): the same textured frame repeated."""
    return np.stack([window(texture(seed), 0, 0)] * n)


def linear_frames(n: int = 16, seed: int = 0) -> np.ndarray:
    """(n, 64, 64, 3): a texture panning at a constant (2, 1) px per frame."""
    tex = texture(seed)
    return np.stack([window(tex, 2 * t, t) for t in range(n)])


def jitter_frames(n: int = 16, seed: int = 0) -> np.ndarray:
    """(n, 64, 64, 3): the same texture jumping to random offsets every frame."""
    tex, rng = texture(seed), np.random.default_rng(seed + 1)
    return np.stack([window(tex, *rng.integers(0, 24, 2)) for _ in range(n)])


def flicker_frames(n: int = 16, low: int = 100, high: int = 140) -> np.ndarray:
    """(n, 32, 32, 3): uniform grey alternating between ``low`` and ``high``."""
    return np.stack([np.full((32, 32, 3), low if t % 2 == 0 else high, np.uint8) for t in range(n)])


@pytest.fixture
def videos_dir(tmp_path: Path) -> Path:
    """A folder named the VBench way: two prompts, plus one unreadable file."""
    d = tmp_path / "videos"
    d.mkdir()
    write_mp4(d / "a still lake-0.mp4", static_frames(), fps=8, crf=0)
    write_mp4(d / "a panning street-0.mp4", linear_frames(), fps=8, crf=0)
    (d / "a broken clip-0.mp4").write_bytes(b"not a video")
    return d


def byte_level_alphabet() -> list[str]:
    """The 256 characters of the GPT-2 / CLIP byte-level BPE alphabet (printable bytes kept, others
    shifted above 255)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(shifted))]


def tiny_clip_dir(root: Path) -> Path:
    """A randomly initialised tiny CLIPModel with a byte-level tokenizer, saved as a local folder."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    chars = byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    torch.manual_seed(0)
    common = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = CLIPConfig(
        text_config={
            **common,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={**common, "image_size": 224, "patch_size": 32},
        projection_dim=8,
    )
    CLIPModel(cfg).eval().save_pretrained(root)
    from transformers import CLIPTokenizer

    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(root)
    return root


def tiny_dino_dir(root: Path) -> Path:
    """A randomly initialised tiny ViTModel (the DINO architecture), saved as a local folder."""
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    ViTModel(cfg, add_pooling_layer=False).eval().save_pretrained(root)
    return root


@pytest.fixture
def synth():
    """The frame generators above (test files cannot import conftest under importlib mode)."""
    import types

    return types.SimpleNamespace(
        static=static_frames, linear=linear_frames, jitter=jitter_frames, flicker=flicker_frames
    )


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_dino(tmp_path_factory) -> Path:
    return tiny_dino_dir(tmp_path_factory.mktemp("dino"))
