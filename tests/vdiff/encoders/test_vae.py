"""Autoencoders: the pixel one inverts exactly; the Wan wrapper matches diffusers' AutoencoderKLWan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

from vdiff.encoders import PixelAutoencoder, VAEConfig, VideoAutoencoder, WanVAE, build_vae


@pytest.mark.parametrize(("p", "pt"), [(1, 1), (2, 1), (4, 1), (4, 2), (8, 4)])
def test_pixel_autoencoder_is_an_exact_bijection(p: int, pt: int) -> None:
    ae = PixelAutoencoder(p, pt)
    assert isinstance(ae, VideoAutoencoder)
    video = torch.rand(2, 3, 8, 16, 24) * 2 - 1
    z = ae.encode(video)
    assert z.shape == (2, 3 * pt * p * p, 8 // pt, 16 // p, 24 // p) and ae.latent_channels == z.shape[1]
    assert ae.latent_frames(8) == z.shape[2]
    assert torch.equal(ae.decode(z), video)
    # and the other way round: every latent decodes to a video that encodes back to it
    z2 = torch.randn_like(z)
    assert torch.equal(ae.encode(ae.decode(z2)), z2)


def test_pixel_channel_layout_is_rgb_then_time_then_rows_then_cols() -> None:
    ae = PixelAutoencoder(2, 2)
    video = torch.arange(2 * 3 * 4 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 4, 6)
    z = ae.encode(video)
    # channel index = ((c * pt + dt) * p + dy) * p + dx
    c, dt, dy, dx, t, y, x = 1, 1, 0, 1, 1, 1, 2
    ch = ((c * 2 + dt) * 2 + dy) * 2 + dx
    assert z[1, ch, t, y, x] == video[1, c, t * 2 + dt, y * 2 + dy, x * 2 + dx]


def test_pixel_rejects_indivisible_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        PixelAutoencoder(4).encode(torch.zeros(1, 3, 2, 10, 16))
    with pytest.raises(ValueError, match="temporal_patch"):
        PixelAutoencoder(4, 2).latent_frames(5)


def _tiny_wan(tmp_path: Path) -> tuple[AutoencoderKLWan, Path]:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.5, 1.0],
    ).eval()
    path = tmp_path / "pipe" / "vae"
    vae.save_pretrained(path)
    return vae, path


def test_wan_vae_wrapper_normalises_like_wan(tmp_path: Path) -> None:
    ref, path = _tiny_wan(tmp_path)
    # a pipeline root with vae/ inside loads too
    for p in (path, path.parent):
        ae = build_vae(VAEConfig(kind="wan", path=str(p), slicing=True))
        assert isinstance(ae, WanVAE) and isinstance(ae, VideoAutoencoder)
    assert (ae.latent_channels, ae.temporal_compression, ae.spatial_compression) == (4, 4, 8)
    video = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = ae.encode(video)
    assert z.shape == (2, 4, ae.latent_frames(5), 4, 4) == (2, 4, 2, 4, 4)
    with torch.no_grad():
        raw = ref.encode(video).latent_dist.mode()
        mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
        std = torch.tensor([2.0, 0.5, 1.5, 1.0]).view(1, 4, 1, 1, 1)
        torch.testing.assert_close(z, (raw - mean) / std, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ae.decode(z), ref.decode(raw).sample.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="1 \\+ a multiple of 4"):
        ae.encode(torch.zeros(1, 3, 4, 32, 32))


def test_wan_vae_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"vae\.path"):
        build_vae(VAEConfig(kind="wan", path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match=r"vae\.path"):
        build_vae(VAEConfig(kind="wan"))
