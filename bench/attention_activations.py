"""Real attention activations: train a small VideoDiT, sample with it, record q, k, v per layer.

The benchmarks and tests of the sparse backends need attention that a trained model produces,
not only synthetic q = k features. This script trains a VideoDiT with the flow-matching loss
on toy videos (:func:`toy_latents`: Gaussian blobs of random colour moving in straight lines
over a dark background, directly in latent space, so no autoencoder or text encoder is
involved), then runs an Euler sampler from noise with an
:class:`~vdiff.attention.record.ActivationRecorder` on the model and saves what it recorded
(tagged with the seed, step and noise level σ) under ``runs/attention_activations/`` (a
gitignored folder). A cached file is reused when its preset's settings match.

Presets (``PRESETS``):

* ``demo``: the demo's VideoDiT (configs/demo.yaml: dim 128, 4 heads of 32, 4 layers, 48 latent
  channels, RoPE θ 10 plus absolute positions) trained and sampled at 8x16x16 = 2048 tokens;
* ``d64`` / ``d128``: dim 256 in 4 heads of 64 / 2 heads of 128, 2 layers, trained at 4x16x16
  = 1024 tokens (120 steps), sampled at 8x32x32 = 8192 tokens (RoPE gives relative positions,
  so what the model learns at 1024 tokens carries to 8192, as low-resolution pre-training does
  in video models; the optional ``finetune_grid`` phase trains a few steps at a larger grid);
* ``d64-16k`` / ``d128-16k``: the ``d64`` / ``d128`` models (their weights, trained first when
  missing) sampled at 16x32x32 = 16384 tokens;
* ``tiny``: dim 64 in 2 heads of 32, 2 layers, 2x16x16 = 512 tokens (the quickest).

The tests use their own, quicker recipe (tests/vdiff/attention/activations.py).

    python bench/attention_activations.py [--preset demo d64 d128] [--out runs/attention_activations]
                                          [--force] [--threads N]

It prints, per preset, the training loss and, per recorded layer and step of the first seed,
how far attention is from uniform (normalised entropy, 1 = uniform), the fraction of K blocks
the exact top blocks need for 99% of each row's mass (the oracle sparsity at cdf 0.99), the
fraction the predicted mask keeps at cdf 0.99, and cosine / relative L1 of ``sparse`` and
``sparse_sage`` (cdf 0.99, PyTorch paths) against fp64 dense attention. ``--report FILE``
prints the same for an existing recording (e.g. one saved by the tests' recipe).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vdiff.attention import attention
from vdiff.attention.mask import predict_block_mask
from vdiff.attention.metrics import attention_error
from vdiff.attention.record import ActivationRecorder, Recording, load_recordings, save_recordings
from vdiff.models import build_model
from vdiff.models.config import ModelConfig

OUT = Path("runs/attention_activations")
CONTEXT = (1, 4)
"""(B, L) of the constant text context the toy model is trained and sampled with"""


@dataclass(frozen=True)
class Preset:
    """A toy model, how long it trains, and what is recorded."""

    dim: int
    heads: int
    layers: int
    channels: int
    rope_theta: float
    abs_pos_embed: bool
    train_grid: tuple[int, int, int]
    steps: int
    batch: int
    lr: float
    sample_grid: tuple[int, int, int]
    sample_steps: int
    record_steps: tuple[int, ...]
    """the sampling steps whose attention is recorded"""
    seeds: tuple[int, ...]
    finetune_grid: tuple[int, int, int] | None = None
    finetune_steps: int = 0
    weights_of: str | None = None
    """sample with the trained weights of this preset (trained first when missing) instead of training"""


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        dim=64, heads=2, layers=2, channels=8, rope_theta=10.0, abs_pos_embed=False,
        train_grid=(2, 16, 16), steps=60, batch=4, lr=3e-3,
        sample_grid=(2, 16, 16), sample_steps=6, record_steps=(1, 3, 5), seeds=(0, 1, 2, 3),
    ),
    "demo": Preset(
        dim=128, heads=4, layers=4, channels=48, rope_theta=10.0, abs_pos_embed=True,
        train_grid=(8, 16, 16), steps=60, batch=2, lr=2e-3,
        sample_grid=(8, 16, 16), sample_steps=10, record_steps=(2, 5, 8), seeds=(0, 1, 2, 3),
    ),
    "d64": Preset(
        dim=256, heads=4, layers=2, channels=16, rope_theta=10.0, abs_pos_embed=False,
        train_grid=(4, 16, 16), steps=120, batch=2, lr=2e-3,
        sample_grid=(8, 32, 32), sample_steps=4, record_steps=(1, 3), seeds=(0, 1),
    ),
    "d128": Preset(
        dim=256, heads=2, layers=2, channels=16, rope_theta=10.0, abs_pos_embed=False,
        train_grid=(4, 16, 16), steps=120, batch=2, lr=2e-3,
        sample_grid=(8, 32, 32), sample_steps=4, record_steps=(1, 3), seeds=(0, 1),
    ),
}  # fmt: skip
# NOTE: the same trained models sampled at 16x32x32 = 16384 tokens (the N of the speed goal)
PRESETS["d64-16k"] = replace(PRESETS["d64"], sample_grid=(16, 32, 32), weights_of="d64")
PRESETS["d128-16k"] = replace(PRESETS["d128"], sample_grid=(16, 32, 32), weights_of="d128")


def toy_latents(
    batch: int, *, grid: tuple[int, int, int], channels: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch, channels, T, H, W) toy videos: 3 to 6 Gaussian blobs moving in straight lines."""
    t, h, w = grid
    tt = torch.arange(t, dtype=torch.float32)[:, None, None]
    yy = torch.arange(h, dtype=torch.float32)[None, :, None]
    xx = torch.arange(w, dtype=torch.float32)[None, None, :]
    out = torch.zeros(batch, channels, t, h, w)
    for b in range(batch):
        n = int(torch.randint(3, 7, (), generator=generator))
        for _ in range(n):
            y0, x0 = torch.rand(2, generator=generator) * torch.tensor([h, w])
            vy, vx = (torch.rand(2, generator=generator) - 0.5) * 2.0  # tokens per frame
            r = 1.0 + torch.rand((), generator=generator) * max(1.0, min(h, w) / 8)
            colour = torch.randn(channels, generator=generator)
            d2 = (yy - (y0 + vy * tt)) ** 2 + (xx - (x0 + vx * tt)) ** 2  # (T, H, W)
            out[b] += colour[:, None, None, None] * torch.exp(-d2 / (2 * r * r))
    return out - 0.5


def build_toy_model(p: Preset) -> torch.nn.Module:
    """The preset's VideoDiT (patch 1, so one token per latent pixel)."""
    head_dim = p.dim // p.heads
    cfg = ModelConfig(
        in_channels=p.channels,
        out_channels=p.channels,
        patch_size=(1, 1, 1),
        num_heads=p.heads,
        head_dim=head_dim,
        ffn_dim=2 * p.dim,
        num_layers=p.layers,
        text_dim=32,
        freq_dim=64,
        rope_theta=p.rope_theta,
        rope_max_seq_len=64,
        abs_pos_embed=p.abs_pos_embed,
    )
    torch.manual_seed(0)
    return build_model(cfg)


def context(p: Preset) -> torch.Tensor:
    """The constant (1, L, 32) text context (the toy task is unconditional)."""
    return torch.randn(*CONTEXT, 32, generator=torch.Generator().manual_seed(7))


def train(model: torch.nn.Module, p: Preset, *, log: bool = False) -> list[float]:
    """Flow-matching training on toy videos; returns the loss of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    ctx = context(p)
    losses = []
    phases = [(p.train_grid, p.steps)]
    if p.finetune_grid is not None and p.finetune_steps:
        phases.append((p.finetune_grid, p.finetune_steps))
    model.train()
    for grid, steps in phases:
        batch = p.batch if grid == p.train_grid else 1
        for i in range(steps):
            x0 = toy_latents(batch, grid=grid, channels=p.channels, generator=g)  # (B, C, T, H, W)
            noise = torch.randn(x0.shape, generator=g)
            sigma = torch.sigmoid(torch.randn(batch, generator=g))  # logit-normal σ, (B,)
            s = sigma.view(-1, 1, 1, 1, 1)
            xt = (1 - s) * x0 + s * noise
            pred = model(xt, sigma * 1000, ctx.expand(batch, -1, -1))
            loss = torch.nn.functional.mse_loss(pred, noise - x0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if log and (i % 50 == 0 or i == steps - 1):
                print(f"  train {grid} step {i}: loss {losses[-1]:.4f}", flush=True)
    model.eval()
    return losses


@torch.no_grad()
def sample_and_record(
    model: torch.nn.Module, p: Preset, *, seeds: tuple[int, ...] | None = None
) -> list[Recording]:
    """Euler sampling (σ from 1 to 0, shift 3) from each seed's noise; q, k, v of the preset's steps."""
    ctx = context(p)
    sig = torch.linspace(1.0, 0.0, p.sample_steps + 1)
    sig = 3.0 * sig / (1 + 2.0 * sig)  # time shift 3
    rec = ActivationRecorder(model)
    for seed in p.seeds if seeds is None else seeds:
        x = torch.randn(1, p.channels, *p.sample_grid, generator=torch.Generator().manual_seed(seed))
        for i in range(p.sample_steps):
            s = float(sig[i])
            if i in p.record_steps:
                rec.tag = {"seed": seed, "step": i, "sigma": s, "grid": list(p.sample_grid)}
                with rec:
                    v = model(x, torch.tensor([s * 1000]), ctx)
            else:
                v = model(x, torch.tensor([s * 1000]), ctx)
            x = x + (float(sig[i + 1]) - s) * v
    return rec.records


def attention_stats(
    q: torch.Tensor, k: torch.Tensor, *, rows: int = 512, k_block: int = 64
) -> tuple[float, float]:
    """(normalised entropy, oracle kept fraction at 0.99) of softmax(q kᵀ/√D), over a sample of rows.

    Entropy / log N is 1 for uniform attention. The oracle kept fraction is, per row, the
    fewest K blocks whose exact attention mass reaches 0.99, over the number of K blocks.
    """
    b, h, n, d = q.shape
    idx = torch.linspace(0, n - 1, min(rows, n)).long()
    s = torch.matmul(q[:, :, idx].double(), k.double().transpose(-1, -2)) * d**-0.5  # (B, H, r, N)
    p = torch.softmax(s, dim=-1)
    ent = float((-(p * p.clamp_min(1e-300).log()).sum(-1) / math.log(n)).mean())
    nk = math.ceil(n / k_block)
    pb = torch.nn.functional.pad(p, (0, nk * k_block - n)).view(b, h, len(idx), nk, k_block).sum(-1)
    ps = pb.sort(dim=-1, descending=True).values
    need = ((ps.cumsum(-1) - ps) < 0.99).sum(-1).double() / nk  # (B, H, r)
    return ent, float(need.mean())


def fp64_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact attention in fp64, one head at a time (an N x N fp64 matrix per head)."""
    out = torch.empty(q.shape, dtype=torch.float64)
    for h in range(q.shape[1]):
        s = torch.matmul(q[:, h].double(), k[:, h].double().transpose(-1, -2)) * q.shape[-1] ** -0.5
        out[:, h] = torch.matmul(torch.softmax(s, dim=-1), v[:, h].double())
    return out


@torch.no_grad()
def report_row(r: Recording) -> str:
    """One Markdown row: how local a recorded layer's attention is, and the sparse backends' error
    on it at the default cdf 0.99 (kernel "torch": the sparse paths, never the dense fallback)."""
    ent, oracle = attention_stats(r.q, r.k)
    kept = float(predict_block_mask(r.q, r.k, scale=r.q.shape[-1] ** -0.5).float().mean())
    ref = fp64_dense(r.q, r.k, r.v)
    cells = []
    for backend in ("sparse", "sparse_sage"):
        err = attention_error(attention(r.q, r.k, r.v, backend=backend, kernel="torch"), ref)
        cells += [f"{err.cos_sim:.5f}", f"{err.rel_l1:.4f}"]
    return (
        f"| {r.layer} | {r.tag['step']} | {r.tag['sigma']:.2f} | {r.q.shape[2]} | {r.q.shape[3]} | "
        f"{ent:.3f} | {oracle:.3f} | {kept:.3f} | {' | '.join(cells)} |"
    )


def generate(name: str, *, out: Path = OUT, force: bool = False, log: bool = True) -> Path:
    """Train the preset's model and record its activations (cached at ``out/NAME.pt``); the path."""
    p = PRESETS[name]
    path = out / f"{name}.pt"
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(p).items()}
    if p.weights_of is None:
        del settings["weights_of"]  # the cache key of files written before the field existed
    if path.exists() and not force:
        _, meta = load_recordings(path)
        if meta.get("preset") == settings:
            return path
    t0 = time.perf_counter()
    if p.weights_of is not None:
        model, losses = trained_model(p.weights_of, out=out), [math.nan]
    else:
        model = build_toy_model(p)
        losses = train(model, p, log=log)
    t_train = time.perf_counter() - t0
    records = sample_and_record(model, p)
    meta = {
        "name": name,
        "preset": settings,
        "loss_first": losses[0],
        "loss_last10": sum(losses[-10:]) / len(losses[-10:]),
        "train_seconds": t_train,
        "record_seconds": time.perf_counter() - t0 - t_train,
    }
    save_recordings(records, path, meta=meta)
    if p.weights_of is None:
        torch.save(model.state_dict(), out / f"{name}.model.pt")
    return path


def trained_model(name: str, *, out: Path = OUT) -> torch.nn.Module:
    """The preset's model with the weights :func:`generate` saved (trained first when missing)."""
    if PRESETS[name].weights_of is not None:
        return trained_model(PRESETS[name].weights_of, out=out)
    if not (out / f"{name}.model.pt").exists():
        generate(name, out=out, force=True, log=False)
    model = build_toy_model(PRESETS[name])
    model.load_state_dict(torch.load(out / f"{name}.model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="+", default=["demo", "d64", "d128"], choices=sorted(PRESETS))
    ap.add_argument("--out", type=Path, default=OUT, help="cache folder (default runs/attention_activations)")
    ap.add_argument("--force", action="store_true", help="retrain even when a cached file matches")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--report", type=Path, default=None, help="only report on this recordings file")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.report is not None:
        records, _ = load_recordings(args.report)
        for r in records:
            if r.tag.get("seed") == records[0].tag.get("seed"):
                print(report_row(r), flush=True)
        return 0
    for name in args.preset:
        print(f"# preset {name}", flush=True)
        path = generate(name, out=args.out, force=args.force)
        records, meta = load_recordings(path)
        source = PRESETS[name].weights_of
        trained = (
            f"the weights of {source}"
            if source is not None
            else f"loss {meta['loss_first']:.3f} -> {meta['loss_last10']:.3f} "
            f"(train {meta['train_seconds']:.0f} s)"
        )
        print(f"{path}: {len(records)} records; {trained}, record {meta['record_seconds']:.0f} s")
        print(
            "| layer | step | sigma | N | D | entropy / log N | oracle kept @0.99 | mask kept @0.99 | "
            "sparse cos | sparse rel L1 | sparse_sage cos | sparse_sage rel L1 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in records:
            if r.tag["seed"] != records[0].tag["seed"]:
                continue
            print(report_row(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
