"""Precompute VAE latents and text embeddings once: ``vdiff cache DATA --out DIR [--config YAML]``.

Reads raw-clip shards (``DATA``: `vdiff curate` output, or another tool's ``.mp4`` with
``.txt``/``.json`` samples, probed as training probes them), decodes each clip exactly as
training would (first ``data.num_frames`` frames at ``data.fps``, resized and centre-cropped),
encodes it with the configured autoencoder and text encoder, and writes
``DIR/shards/<same shard name>.tar`` with one ``<key>.safetensors`` (tensors ``latents``
(C, T', H', W') and ``context`` (L, D)) and one ``<key>.json`` (the clip's metadata) per
sample; no pickle. ``DIR/empty_prompt.safetensors`` holds the empty prompt's embedding for
caption dropout, ``DIR/cache_config.yaml`` the settings.

Resumable: each shard is written under a temporary name and renamed when complete, and a
rerun skips the shards already cached, so a killed run continues where it stopped. Passing a
training config (``--config configs/tiny.yaml``) takes its ``data``, ``vae`` and
``text`` sections, so training on the cache sees what it would have computed itself.

``DIR`` must be absent, empty, or an earlier cache (``DIR/.vdiff-cache.json`` records the
settings and each source shard's path, size, mtime and sha256); a cache resumes only when both
match. ``--replace`` re-caches what changed (other settings, changed, added or removed source
shards; the cached shards of removed sources are deleted), ``--overwrite`` writes into a
non-empty folder that is no cache (only the cache's own file names are replaced). One run at a
time holds ``DIR/.vdiff.lock``.

On many GPUs or nodes: ``torchrun --nproc_per_node=G [--nnodes=N ...] -m pipelines.cache DATA
--out DIR ...``. Rank 0 checks, locks and prepares ``DIR``; the shards left to do are dealt out
round robin, one GPU (``LOCAL_RANK``) per rank; the output is byte-identical to a one-process
run. ``DATA`` and ``DIR`` must be shared by all nodes.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from vdiff.config import ConfigError, describe, is_override, load_config, save_config, to_dict
from vdiff.data import DataConfig, clip_meta, index_shard, list_shards, load_raw_sample
from vdiff.data.loader import CACHED_EXT, EMPTY_PROMPT_FILE
from vdiff.encoders import (
    TextEncoder,
    TextEncoderConfig,
    VAEConfig,
    VideoAutoencoder,
    build_text_encoder,
    build_vae,
)
from vdiff.errors import EXPECTED_ERRORS, report_error
from vdiff.io.files import atomic_open, atomic_write_bytes, file_sha256
from vdiff.io.outdir import (
    InputChanges,
    OutDirError,
    check_out_dir,
    compare_inputs,
    describe_input,
    marker_path,
    out_dir_lock,
    read_marker,
    remove_own_temps,
    write_marker,
)
from vdiff.parallel.distributed import destroy_distributed, init_distributed
from vdiff.parallel.shares import failed_rank, from_rank0, gather_strings, rank_share, world

COMMAND = "cache"
OWN_NAMES = r"cache_settings\.json|cache_config\.yaml|empty_prompt\.safetensors|\.vdiff-cache\.json"
"""Regular expression of the files ``vdiff cache`` writes in ``DIR`` (besides ``DIR/shards/``)."""


@dataclass
class CacheConfig:
    """What to encode and with which encoders (``data``/``vae``/``text`` as in training)."""

    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    out: str = "runs/cache"
    """output folder (shards/, empty_prompt.safetensors, cache_config.yaml)"""
    batch_size: int = 8
    """clips encoded together"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, ..."""

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.data.random_offset:
            raise ConfigError(
                "data.random_offset=true cannot be cached (a cache fixes each clip); set it false"
            )


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous().cpu() for k, v in tensors.items()})


def _settings(cfg: CacheConfig) -> dict:
    """What makes two caches interchangeable (not the input path or batch size)."""
    d = to_dict(cfg)
    d["data"] = {k: v for k, v in d["data"].items() if k in ("num_frames", "fps", "height", "width")}
    return {"data": d["data"], "vae": d["vae"], "text": d["text"]}


def claim_cache(out: Path, sources: list[Path], *, settings: dict, replace: bool) -> list[dict[str, Any]]:
    """Check ``out``'s marker against these sources and settings, clear what is stale, mark ``out``.

    Returns the marker's source entries. Afterwards every file in ``out/shards`` named like a
    source is that source's cache under these settings: a cached shard is kept only when its
    source is unchanged since the marker recorded it and the settings are the same; files named
    like a source that the marker does not vouch for (a new folder, ``--overwrite``) are removed.
    Other settings or sources than the marker's are an error unless ``replace``.
    """
    marker = read_marker(out, COMMAND)
    entries = [describe_input(p) for p in sources]
    valid: set[str] = set()
    old: list[str] = []
    if marker is not None:
        changes, entries = compare_inputs(marker.get("inputs", []), entries)
        _refuse_unless(replace, out=out, same_settings=marker.get("settings") == settings, changes=changes)
        old = [Path(e["path"]).name for e in marker.get("inputs", [])]
        if marker.get("settings") == settings:
            moved = {Path(p).name for p in changes.changed + changes.removed}
            valid = {n for n in old if n not in moved}
    for name in sorted(({p.name for p in sources} | set(old)) - valid):
        (out / "shards" / name).unlink(missing_ok=True)
    write_marker(out, COMMAND, settings=settings, inputs=entries)
    return entries


def _refuse_unless(replace: bool, *, out: Path, same_settings: bool, changes: InputChanges) -> None:
    if replace:
        return
    if not same_settings:
        raise OutDirError(
            f"{out} already holds a cache made with other data/vae/text settings "
            f"({marker_path(out, COMMAND)}); pass --replace to re-cache it with these, "
            "or choose another --out"
        )
    if changes:
        raise OutDirError(
            f"{out} holds a cache of other source shards ({changes.summary()}); pass --replace to "
            "re-cache what changed (the cached shards of removed sources are deleted), "
            "or choose another --out"
        )


def cache(cfg: CacheConfig, *, overwrite: bool = False, replace: bool = False) -> Path:
    """Encode every shard of ``cfg.data.path`` into ``cfg.out``; return the output folder.

    ``overwrite``: write into a non-empty folder that is no cache; ``replace``: re-cache an
    earlier cache whose settings or source shards differ (see :func:`claim_cache`). Raises
    :class:`OutDirError` (nothing written) otherwise, and FileNotFoundError when there are no
    source shards. Under ``torchrun`` the caller has joined the process group
    (:func:`vdiff.parallel.distributed.init_distributed`): rank 0 checks, locks and prepares
    ``cfg.out``, and each rank then encodes its share of the shards still to do.
    """
    out = Path(cfg.out)
    sources = list_shards(cfg.data.path)  # NOTE: no source shard: an error before --out is touched
    rank, _ = world()
    with ExitStack() as held:
        prepared: tuple[dict, list[dict[str, Any]]] | None = None
        error: Exception | None = None
        if rank == 0:
            try:
                check_out_dir(out, command=COMMAND, overwrite=overwrite)
                held.enter_context(out_dir_lock(out, command=COMMAND))  # NOTE: rank 0 holds it for all
                prepared = _prepare(cfg, sources, out=out, replace=replace)
            except Exception as e:  # NOTE: re-raised below, once the other ranks know to stop
                error = e
        _stop_if_failed(error)
        return _encode_shards(cfg, sources, out=out, prepared=prepared)


class OtherRankFailed(RuntimeError):
    """Another rank of this ``torchrun`` job failed (its own error is what to read)."""


def _stop_if_failed(error: Exception | None) -> None:
    """Re-raise this rank's ``error``, or stop every other rank too when some rank had one."""
    failed = failed_rank(error is not None)
    if error is not None:
        raise error
    if failed is not None:
        raise OtherRankFailed(f"rank {failed} failed (its error is above); this rank stopped too")


def _prepare(
    cfg: CacheConfig, sources: list[Path], *, out: Path, replace: bool
) -> tuple[dict, list[dict[str, Any]]]:
    """Claim ``out`` (marker, stale shards, temps) and write its settings files: (settings, entries)."""
    settings = json.loads(json.dumps(_settings(cfg)))  # NOTE: as the marker stores it (lists, not tuples)
    entries = claim_cache(out, sources, settings=settings, replace=replace)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out, OWN_NAMES)
    remove_own_temps(shard_dir, [p.name for p in sources])
    atomic_write_bytes(out / "cache_settings.json", json.dumps(settings, indent=2).encode())
    save_config(cfg, out / "cache_config.yaml")
    return settings, entries


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DONE, ENCODE, HASH = 0, 1, 2
"""What a source shard needs: nothing, encoding (and hashing), or only its sha256 recorded."""


def _todo(source: Path, k: int, shard_dir: Path, prepared: tuple[dict, list[dict]] | None) -> int:
    """Rank 0: :data:`DONE`, :data:`ENCODE` or :data:`HASH` for source ``k``; other ranks: 0 (unused)."""
    if prepared is None:
        return DONE
    if not (shard_dir / source.name).is_file():
        return ENCODE
    return DONE if prepared[1][k].get("sha256") else HASH


def _encode_shards(
    cfg: CacheConfig, sources: list[Path], *, out: Path, prepared: tuple[dict, list[dict[str, Any]]] | None
) -> Path:
    """Every rank: encode this rank's share of the unfinished shards; rank 0 then marks ``out`` complete."""
    rank, world_size = world()
    shard_dir = out / "shards"
    device = _device(cfg.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # NOTE: this rank's GPU (LOCAL_RANK)

    # 1. What is left, in rank 0's view (it just cleared what was stale), on every rank: shards to
    # encode, and finished ones whose source hash is not yet recorded (a run killed before the end).
    todo = from_rank0([_todo(sources[k], k, shard_dir, prepared) for k in range(len(sources))])
    mine = rank_share([k for k, t in enumerate(todo) if t == ENCODE], rank=rank, world_size=world_size)
    to_hash = rank_share([k for k, t in enumerate(todo) if t == HASH], rank=rank, world_size=world_size)

    # 2. Encoders, (rank 0) the empty prompt for caption dropout, then each input shard -> one
    # output shard of the same name. A rank that fails stops every rank at the next collective.
    hashes: dict[int, str] = {}
    error: Exception | None = None
    try:
        vae = build_vae(cfg.vae).to(device)
        text = build_text_encoder(cfg.text).to(device)
        if rank == 0:
            empty = _safetensors_bytes({"context": text.encode([""])[0]})
            atomic_write_bytes(out / EMPTY_PROMPT_FILE, empty)
        for n, k in enumerate(mine, start=1):
            target = shard_dir / sources[k].name
            hashes[k], clips = _encode_shard(cfg, sources[k], target, vae=vae, text=text, device=device)
            where = f"{n}/{len(mine)} of rank {rank}" if world_size > 1 else f"{n}/{len(mine)}"
            print(f"cached {sources[k].name} ({clips} clips) [{where}]", flush=True)
        hashes.update({k: file_sha256(sources[k]) for k in to_hash})
    except Exception as e:  # NOTE: re-raised below, once the other ranks know to stop
        error = e
    _stop_if_failed(error)
    sha = gather_strings(hashes, n=len(sources), width=64)

    # 3. Rank 0 records the sources' hashes and that the cache is complete.
    if rank == 0:
        assert prepared is not None
        entries = [e if h is None else {**e, "sha256": h} for e, h in zip(prepared[1], sha)]
        write_marker(out, COMMAND, settings=prepared[0], inputs=entries, complete=True)
    return out


def _encode_shard(
    cfg: CacheConfig,
    shard: Path,
    target: Path,
    *,
    vae: VideoAutoencoder,
    text: TextEncoder,
    device: torch.device,
) -> tuple[str, int]:
    """Write ``target``, the cache of one source shard; return (the source's sha256, its clip count)."""
    import webdataset as wds

    settings = json.loads(json.dumps(_settings(cfg)))
    sha = file_sha256(shard)
    refs = index_shard(shard)
    with atomic_open(target, "wb") as f:
        # NOTE: a fixed mtime (0) in the tar headers, not the clock's: the same source content gives
        # the same bytes in every run, on every rank.
        writer = wds.TarWriter(f, mtime=0)
        for i in range(0, len(refs), cfg.batch_size):
            chunk = refs[i : i + cfg.batch_size]
            samples = [load_raw_sample(ref, cfg.data) for ref in chunk]
            with torch.no_grad():
                latents = encode_videos(vae, [s["video"] for s in samples], device=device)
                context = text.encode([s["caption"] for s in samples]).cpu()  # (B, L, D)
            for ref, s, z, c in zip(chunk, samples, latents, context):
                meta = clip_meta(ref)  # NOTE: a third-party clip gets its probed frames, fps and size
                meta.update(caption=s["caption"], cache=settings)
                writer.write(
                    {
                        "__key__": ref.key,
                        CACHED_EXT: _safetensors_bytes({"latents": z, "context": c}),
                        "json": json.dumps(meta, sort_keys=True),
                    }
                )
        writer.close()
    return sha, len(refs)


def encode_videos(
    vae: VideoAutoencoder, videos: list[torch.Tensor], *, device: torch.device
) -> list[torch.Tensor]:
    """Latents (C, T', H', W') of each (3, T, H, W) video; same-size videos are encoded together."""
    out: list[torch.Tensor | None] = [None] * len(videos)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(videos):
        by_shape.setdefault(tuple(v.shape), []).append(i)
    for idx in by_shape.values():
        z = vae.encode(torch.stack([videos[i] for i in idx]).to(device)).float().cpu()  # (b, C, T', H', W')
        for i, zi in zip(idx, z):
            out[i] = zi
    return out  # type: ignore[return-value]


def _load(argv: list[str]) -> CacheConfig:
    data, out, config, overrides = None, None, None, []
    it = iter(argv)
    for a in it:
        if a == "--out":
            out = next(it, None)
        elif a == "--config":
            config = next(it, None)
        elif is_override(a):
            overrides.append(a)
        elif data is None and not a.startswith("-"):
            data = a
        else:
            raise ConfigError(f"unexpected argument {a!r}")
    if data is None or out is None:
        raise ConfigError(
            "usage: vdiff cache DATA --out DIR [--config TRAIN_OR_CACHE.yaml] [--overwrite] [--replace] "
            "[key.sub=value ...]"
        )
    base = ["data.path=" + data, "out=" + out]
    sections: list[str] = []
    if config is not None:
        loaded = yaml.safe_load(Path(config).read_text()) if Path(config).is_file() else None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {config}: not a YAML mapping file")
        # NOTE: a training config has more sections; keep the ones a cache uses (JSON is YAML).
        keep = ("data", "vae", "text", "batch_size", "device")
        sections = [f"{k}={json.dumps(v)}" for k, v in loaded.items() if k in keep]
    return load_config(CacheConfig, None, [*sections, *base, *overrides])


FLAGS = ("--overwrite", "--replace")
"""Options without a value: what to do with an --out that is not a matching cache."""


def main(argv: list[str] | None = None) -> int:
    """``vdiff cache DATA --out DIR [--config YAML] [--overwrite] [--replace] [key.sub=value ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("config keys:")
        print("\n".join("  " + line for line in describe(CacheConfig)))
        return 0
    flags = [a for a in argv if a in FLAGS]
    cfg = None
    try:
        cfg = _load([a for a in argv if a not in FLAGS])
        init_distributed(_device(cfg.device))  # NOTE: a plain process stays one; torchrun ranks join
        try:
            cache(cfg, overwrite="--overwrite" in flags, replace="--replace" in flags)
        finally:
            destroy_distributed()
    except (*EXPECTED_ERRORS, OtherRankFailed) as e:  # NOTE: ConfigError, OutDirError: ValueErrors (exit 2)
        return report_error("vdiff cache", e, where=cfg.out if cfg is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
