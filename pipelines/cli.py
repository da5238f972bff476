"""The ``vdiff`` console script: one subcommand per pipeline.

``vdiff NAME ARGS...`` runs ``pipelines.NAME.main(ARGS)``; ``python -m pipelines.NAME ARGS...``
runs the same function (torchrun uses that form). An input or environment error a subcommand
does not report itself (a bad tar, a full disk, ``--out`` naming a file) ends as one line on
stderr: exit 2 for the input's fault, 1 for the environment's (:mod:`vdiff.errors`).
"""

from __future__ import annotations

import importlib
import sys

from vdiff.errors import EXPECTED_ERRORS, report_error

# NOTE: subcommand -> (module, one-line help). Modules are imported lazily so that
# ``vdiff --help`` stays fast and a subcommand's heavy imports do not slow the others.
COMMANDS: dict[str, tuple[str, str]] = {
    "curate": ("pipelines.curate", "raw videos -> scene-cut, motion-filtered, captioned WebDataset shards"),
    "cache": ("pipelines.cache", "precompute VAE latents and text embeddings into shards"),
    "train": ("pipelines.train", "train a video DiT with flow matching (torchrun for many devices)"),
    "distill": ("pipelines.distill", "distil a trained run into a few-step student without guidance"),
    "convert": ("pipelines.convert", "Wan2.1 checkpoints diffusers <-> vdiff; export training runs"),
    "sample": ("pipelines.sample", "text -> video with a trained or converted model"),
    "eval": ("pipelines.evaluate", "VBench-style scores and an HTML report for a folder of videos"),
    "demo": ("pipelines.demo", "the whole loop at laptop scale on bundled data"),
}


def _usage() -> str:
    lines = ["usage: vdiff COMMAND [ARGS...]", "", "commands:"]
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            lines.append(f"  {name:<9} {help_}")
    lines.append("")
    lines.append("`vdiff COMMAND --help` describes a command and its config keys.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``vdiff COMMAND ...`` to its pipeline; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS or importlib.util.find_spec(COMMANDS[name][0]) is None:
        print(f"vdiff: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except EXPECTED_ERRORS as e:
        return report_error(f"vdiff {name}", e)


if __name__ == "__main__":
    sys.exit(main())
