"""OpenAI CLIP (the ``clip`` package's layout, as VBench loads ViT-B/32 with ``clip.load``), its BPE
tokenizer, and the transformer blocks ViCLIP shares.

Parameter names follow OpenAI's ``clip/model.py`` so that ``ViT-B-32.pt`` (a TorchScript archive)
or a plain state dict of it loads with ``strict=True``: ``visual.conv1.weight``,
``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre``,
``visual.transformer.resblocks.N.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.*, ln_1.*,
mlp.c_fc.*, mlp.c_proj.*, ln_2.*}``, ``visual.ln_post``, ``visual.proj``, ``transformer.resblocks.N.*``,
``token_embedding.weight``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``.
"""

from __future__ import annotations

import gzip
import html
import itertools
import unicodedata
import zipfile
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

# NOTE: the TorchScript archive of ViT-B-32.pt carries these three integers beside the weights;
# clip's build_model deletes them before loading, and so does load_clip_state.
CLIP_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (CLIP's fp16-safe subclass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def causal_mask(n: int) -> torch.Tensor:
    """(n, n) additive mask: -inf above the diagonal (CLIP's text ``build_attention_mask``)."""
    return torch.full((n, n), float("-inf")).triu_(1)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))`` on (L, B, D) sequences."""

    def __init__(self, d_model: int, n_head: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)
        # NOTE: a buffer would add a state-dict key the checkpoints do not have; keep a plain attribute.
        self.attn_mask = attn_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (L, B, D)
        mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (L, B, D)
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """CLIP image tower: patchify, class token, pre-norm transformer, ``ln_post(cls) @ proj``."""

    def __init__(
        self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width)
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, R, R) -> (B, output_dim)
        x = self.conv1(x)  # (B, W, g, g)
        x = x.flatten(2).permute(0, 2, 1)  # (B, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, N, W)
        x = self.ln_pre(x).permute(1, 0, 2)  # (N, B, W)
        x = self.transformer(x).permute(1, 0, 2)  # (B, N, W)
        return self.ln_post(x[:, 0, :]) @ self.proj  # (B, output_dim)


class CLIP(nn.Module):
    """OpenAI CLIP with a ViT image tower; text tower parameters live at the top level as in ``clip``."""

    def __init__(
        self,
        *,
        embed_dim: int,
        image_resolution: int,
        vision_layers: int,
        vision_width: int,
        vision_patch_size: int,
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.visual = VisionTransformer(
            image_resolution,
            vision_patch_size,
            vision_width,
            vision_layers,
            vision_width // 64 or 1,
            embed_dim,
        )
        self.transformer = Transformer(
            transformer_width, transformer_layers, transformer_heads, causal_mask(context_length)
        )
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(
            torch.empty(context_length, transformer_width).normal_(std=0.01)
        )
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim).normal_(std=0.02))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))  # log(100), OpenAI's trained value

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:  # (B, 3, R, R) -> (B, E)
        return self.visual(image.to(self.visual.conv1.weight.dtype))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:  # (B, L) token ids -> (B, E)
        x = self.token_embedding(text) + self.positional_embedding  # (B, L, D)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # (B, L, D)
        x = self.ln_final(x)
        # NOTE: the end-of-text token has the largest id, so argmax finds it (as clip does).
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection  # (B, E)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (B_img, B_txt), logits_per_text (B_txt, B_img)) = exp(logit_scale) * cos."""
        img = self.encode_image(image)
        txt = self.encode_text(text)
        img = img / img.norm(dim=1, keepdim=True)
        txt = txt / txt.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


def clip_vit_b32() -> CLIP:
    """ViT-B/32 as in OpenAI's checkpoint (embed 512, 224 px, 12x768 vision, 12x512 text, ctx 77)."""
    return CLIP(
        embed_dim=512,
        image_resolution=224,
        vision_layers=12,
        vision_width=768,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=512,
        transformer_heads=8,
        transformer_layers=12,
    )


def clip_from_state_dict(state: dict[str, torch.Tensor]) -> CLIP:
    """Build the CLIP whose shapes the state dict has (as ``clip.model.build_model`` infers them)."""
    vision_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    width = state["ln_final.weight"].shape[0]
    return CLIP(
        embed_dim=state["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_layers=_count_blocks(state, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_patch_size=patch,
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        transformer_width=width,
        transformer_heads=max(1, width // 64),
        transformer_layers=_count_blocks(state, "transformer.resblocks."),
    )


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive is a zip holding a ``code/`` folder (a plain torch.save zip has none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.startswith("code/") for n in z.namelist())


def read_state_dict(path: Path, *, what: str) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, a TorchScript archive (OpenAI's ``.pt``) or a plain
    ``torch.save`` file (read weights-only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if is_torchscript_archive(path):
        # NOTE: the same reader FVD uses for its TorchScript detector; only the tensors are kept.
        return {k: v for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
    from vdiff.checkpoint import load_plain_weights

    state = load_plain_weights(path, what=what)
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path}: expected a state dict, got {type(state).__name__}")
    return state


def load_clip_state(model: nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    """Strict load after dropping the archive's integer extras; a mismatch names the keys."""
    state = {k: v for k, v in state.items() if k not in CLIP_ARCHIVE_EXTRAS}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{what}: not an OpenAI CLIP state dict ({e})") from e


def load_clip(path: Path, device: str = "cpu") -> CLIP:
    """OpenAI CLIP from ``ViT-B-32.pt`` (or a state dict of it), float32, eval mode."""
    state = read_state_dict(path, what="weights.clip_b32_openai")
    state = {k: v for k, v in state.items() if k not in CLIP_ARCHIVE_EXTRAS}
    model = clip_from_state_dict(state)
    load_clip_state(model, state, what=str(path))
    return model.float().to(device).eval()


# --- tokenizer -----------------------------------------------------------------------------------


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes map to themselves, the rest to chr(256 + i)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def _clean(text: str) -> str:
    """CLIP's ``basic_clean`` + ``whitespace_clean`` + lower-casing.

    ftfy.fix_text is used when installed; without it only its default NFC normalisation is applied
    (the two agree on text without mojibake, such as VBench's prompts).
    """
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class BPETokenizer:
    """CLIP's byte-level BPE (``SimpleTokenizer``) read from ``bpe_simple_vocab_16e6.txt.gz``."""

    def __init__(self, bpe_path: str | Path) -> None:
        import regex

        with gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        alphabet = list(bytes_to_unicode().values())
        vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._regex = regex
        self.cache: dict[str, list[str]] = {}

    def bpe(self, token: str) -> list[str]:
        """Merge the characters of one pre-token (the last one marked ``</w>``) by rank."""
        if token in self.cache:
            return self.cache[token]
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self.cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        byte_map = bytes_to_unicode()
        ids: list[int] = []
        for tok in self._regex.findall(self.pat, _clean(text)):
            tok = "".join(byte_map[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(tok))
        return ids

    def tokenize(
        self, texts: str | list[str], context_length: int = 77, truncate: bool = False
    ) -> torch.Tensor:
        """(N, context_length) int64 ids: ``[sot] + encode(text) + [eot]``, zero-padded.

        ``truncate=False`` (``clip.tokenize``'s default) refuses a longer text; ``True`` (ViCLIP)
        cuts it and ends it with eot.
        """
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"text {text!r} is longer than the context length {context_length}")
                ids = ids[:context_length]
                ids[-1] = self.eot
            out[i, : len(ids)] = torch.tensor(ids)
        return out
