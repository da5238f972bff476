"""RAFT (Teed and Deng, ECCV 2020), the flow network of VBench's dynamic_degree and static filter.

Written from the paper and from reading ``vbench/third_party/RAFT/core`` (raft.py, corr.py @
a06572e; extractor.py, update.py, utils_core/utils.py @ d67ebac): the "things" configuration VBench
loads (``RAFT(args)`` with ``small=False``): a basic feature encoder (instance norm, 256 channels), a
context encoder (batch norm, 128 hidden + 128 context), an all-pairs correlation pyramid of 4
levels looked up at radius 4, a separable ConvGRU update block, and convex 8x upsampling.
Module names match that code, so ``raft-things.pth`` loads with strict key matching.

Pre- and post-processing as VBench's ``DynamicDegree.infer`` / ``StaticFilter.infer``: RGB frames
as float in [0, 255], padded by ``InputPadder`` ("sintel" mode: replicate, split evenly) to a
multiple of 8, ``model(image1, image2, iters=20, test_mode=True)``, and the upsampled flow of the
padded size is what VBench scores (it never unpads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eval.metric import UnscorableVideoError

RAFT_ITERS = 20
"""the refinement iterations VBench runs (``iters=20``)"""


def _norm(kind: str, channels: int) -> nn.Module:
    # NOTE: InstanceNorm2d without affine holds no tensors, as in the checkpoint.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.InstanceNorm2d(channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a (strided 1x1) shortcut; names as VBench's ``ResidualBlock``."""

    def __init__(self, cin: int, cout: int, *, norm: str, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1, self.norm2 = _norm(norm, cout), _norm(norm, cout)
        self.downsample: nn.Sequential | None = None
        if stride != 1:
            # NOTE: the shortcut norm is registered twice (norm3 and downsample.1), so the
            # checkpoint holds its tensors under both names.
            self.norm3 = _norm(norm, cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class BasicEncoder(nn.Module):
    """(N, 3, H, W) -> (N, out_dim, H/8, W/8): 7x7/2 stem, three stages of two residual blocks."""

    def __init__(self, out_dim: int, *, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = _norm(norm, 64)
        stages, cin = [], 64
        for cout, stride in ((64, 1), (96, 2), (128, 2)):
            stages.append(
                nn.Sequential(
                    ResidualBlock(cin, cout, norm=norm, stride=stride),
                    ResidualBlock(cout, cout, norm=norm, stride=1),
                )
            )
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(128, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))  # (N, 64, H/2, W/2)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 128, H/8, W/8)
        return self.conv2(x)


class MotionEncoder(nn.Module):
    """Correlation features (N, levels*(2r+1)^2, h, w) and flow (N, 2, h, w) -> (N, 128, h, w)."""

    def __init__(self, corr_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([c, f], dim=1))), flow], dim=1)


class SepConvGRU(nn.Module):
    """A ConvGRU step along rows (1x5 kernels), then along columns (5x1)."""

    def __init__(self, hidden: int, inp: int) -> None:
        super().__init__()
        for axis, (k, p) in (("1", ((1, 5), (0, 2))), ("2", ((5, 1), (2, 0)))):
            for gate in "zrq":
                setattr(self, f"conv{gate}{axis}", nn.Conv2d(hidden + inp, hidden, k, padding=p))

    def _step(self, h: torch.Tensor, x: torch.Tensor, axis: str) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(getattr(self, f"convz{axis}")(hx))
        r = torch.sigmoid(getattr(self, f"convr{axis}")(hx))
        q = torch.tanh(getattr(self, f"convq{axis}")(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._step(self._step(h, x, "1"), x, "2")


class FlowHead(nn.Module):
    def __init__(self, inp: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """One refinement: (hidden, context, corr, flow) -> (hidden, upsampling mask, flow delta)."""

    def __init__(self, *, corr_channels: int, hidden: int = 128, context: int = 128) -> None:
        super().__init__()
        self.encoder = MotionEncoder(corr_channels)
        self.gru = SepConvGRU(hidden, context + 128)
        self.flow_head = FlowHead(hidden, 256)
        self.mask = nn.Sequential(nn.Conv2d(hidden, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 64 * 9, 1))

    def forward(
        self, net: torch.Tensor, inp: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.gru(net, torch.cat([inp, self.encoder(flow, corr)], dim=1))
        return net, 0.25 * self.mask(net), self.flow_head(net)


def coords_grid(n: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """(n, 2, h, w) pixel coordinates, channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs, ys])[None].expand(n, -1, -1, -1).clone()


class CorrPyramid:
    """All-pairs correlation of two feature maps, average-pooled 3 times, looked up around coords."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, *, levels: int = 4, radius: int = 4) -> None:
        n, c, h, w = fmap1.shape
        corr = fmap1.flatten(2).transpose(1, 2) @ fmap2.flatten(2)  # (n, h*w, h*w)
        corr = corr.reshape(n * h * w, 1, h, w) / torch.sqrt(torch.tensor(float(c)))
        self.pyramid = [corr]
        for _ in range(levels - 1):
            self.pyramid.append(F.avg_pool2d(self.pyramid[-1], 2, stride=2))
        self.radius = radius

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """coords (n, 2, h, w) -> (n, levels * (2r+1)^2, h, w)."""
        n, _, h, w = coords.shape
        r = self.radius
        d = torch.arange(-r, r + 1, device=coords.device, dtype=coords.dtype)
        # NOTE: RAFT's window (from meshgrid(dy, dx) added to (x, y)) puts the x offset on the FIRST
        # window axis and the y offset on the second; the trained weights expect that order.
        off = torch.stack(torch.broadcast_tensors(d[:, None], d[None, :]), dim=-1)  # (2r+1, 2r+1, 2)
        centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
        out = []
        for i, corr in enumerate(self.pyramid):
            pts = centre / 2**i + off  # (n*h*w, 2r+1, 2r+1, 2) as (x, y)
            hh, ww = corr.shape[-2:]
            grid = torch.stack([2 * pts[..., 0] / (ww - 1) - 1, 2 * pts[..., 1] / (hh - 1) - 1], dim=-1)
            sampled = F.grid_sample(corr, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out.append(sampled.reshape(n, h, w, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


class RAFT(nn.Module):
    """RAFT "things" (the large model). ``forward(image1, image2)`` takes (N, 3, H, W) RGB in
    [0, 255] with H, W multiples of 8 and returns the upsampled flow (N, 2, H, W) after ``iters``."""

    def __init__(self, *, hidden: int = 128, context: int = 128, levels: int = 4, radius: int = 4) -> None:
        super().__init__()
        self.hidden, self.context, self.levels, self.radius = hidden, context, levels, radius
        self.fnet = BasicEncoder(256, norm="instance")
        self.cnet = BasicEncoder(hidden + context, norm="batch")
        self.update_block = UpdateBlock(
            corr_channels=levels * (2 * radius + 1) ** 2, hidden=hidden, context=context
        )

    @staticmethod
    def upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Convex 8x upsampling: flow (N, 2, h, w), mask (N, 576, h, w) -> (N, 2, 8h, 8w)."""
        n, _, h, w = flow.shape
        weights = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
        patches = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
        up = (weights * patches).sum(dim=2)  # (n, 2, 8, 8, h, w)
        return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = RAFT_ITERS) -> torch.Tensor:
        image1 = 2 * (image1 / 255.0) - 1.0  # (N, 3, H, W) in [-1, 1]
        image2 = 2 * (image2 / 255.0) - 1.0
        fmap1, fmap2 = self.fnet(torch.cat([image1, image2])).float().chunk(2)  # (N, 256, H/8, W/8)
        corr = CorrPyramid(fmap1, fmap2, levels=self.levels, radius=self.radius)
        net, inp = self.cnet(image1).split([self.hidden, self.context], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        n, _, h, w = fmap1.shape
        coords0 = coords_grid(n, h, w, image1.device)
        coords1 = coords0.clone()
        for _ in range(iters):
            flow = coords1 - coords0
            net, mask, delta = self.update_block(net, inp, corr(coords1), flow)
            coords1 = coords1 + delta
        # NOTE: VBench keeps only the last iteration's upsampled flow (test_mode=True).
        return self.upsample(coords1 - coords0, mask)


def pad_to_8(h: int, w: int) -> tuple[int, int, int, int]:
    """VBench's ``InputPadder`` ("sintel" mode) as F.pad's (left, right, top, bottom)."""
    ph, pw = (-h) % 8, (-w) % 8
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def load_raft(path: str | Path, *, device: str | torch.device = "cpu") -> RAFT:
    """RAFT with VBench's ``raft-things.pth`` (a DataParallel state dict: ``module.`` prefixes),
    loaded strictly; tensors only (``weights_only``), nothing executed from the file."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a RAFT state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = RAFT()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not VBench's raft-things.pth: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    return model.to(device).eval()


class RaftFlow:
    """Flow between two (H, W, 3) uint8 RGB frames as VBench computes it: (H8, W8, 2) float32 of the
    padded size."""

    def __init__(self, model: RAFT, *, device: str | torch.device = "cpu", iters: int = RAFT_ITERS) -> None:
        self.model, self.device, self.iters = model, torch.device(device), iters

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "cpu") -> RaftFlow:
        return cls(load_raft(path, device=device), device=device)

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        if min(h + (-h) % 8, w + (-w) % 8) < 128:
            # NOTE: the 4-level pyramid pools the 1/8-size correlation 3 times; below 128 px its last
            # level is 1 px (x / (W - 1) divides by 0: NaN flow) or empty (a crash), in VBench too.
            raise UnscorableVideoError(
                f"frames of {h}x{w} px are too small for RAFT (needs >= 121 px a side)"
            )
        pair = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).float().to(self.device)  # (2, 3, H, W)
        pair = F.pad(pair, pad_to_8(*a.shape[:2]), mode="replicate")
        flow = self.model(pair[:1], pair[1:], iters=self.iters)  # (1, 2, H8, W8)
        return flow[0].permute(1, 2, 0).cpu().numpy()
