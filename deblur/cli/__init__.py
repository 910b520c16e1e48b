"""The `deblur` command (pyproject's [project.scripts]): a sub-command per stage, or photos deblurred in this process.

The stages' parsers live here, one module each; `jobs/*.py` in a checkout and `ray job submit -- deblur ...`
on a cluster whose image has the package run the same code, so every stage has one parser.
"""

from __future__ import annotations

import importlib
import sys

from .common import run

#: sub-command → (module in deblur.cli, one line for `deblur --help`)
STAGES = {
    "prepare": "pack a dataset into Parquet shards (local or s3://)",
    "train": "train on Ray Train (the main job; resumes a run of the same name)",
    "evaluate": "PSNR / SSIM / LPIPS and a report with pictures",
    "compile": "a checkpoint to ONNX and, on a GPU with TensorRT, a TensorRT engine",
    "bulk": "deblur a folder, an s3:// prefix or a .tar archive on Ray (resumable)",
    "video": "deblur one video on Ray, temporally consistent",
    "serve": "an HTTP endpoint on Ray Serve",
}

USAGE = f"""usage: deblur PHOTO [PHOTO ...] [-o OUT] [--model M]     one photo or a few, here, no Ray
       deblur STAGE [options]                            a stage as a Ray job

  deblur photo.jpg                          # writes photo.deblurred.jpg beside it
  deblur train                              # the embedded default training (a local Ray)
  deblur train --config gopro --set scaling.num_workers=8
  deblur bulk --input photos/ --output deblurred/
  ray job submit -- deblur bulk --input s3://b/raw --output s3://b/sharp

stages:
{chr(10).join(f"  {name:<10}{what}" for name, what in STAGES.items())}

`deblur STAGE --help` and `deblur photo --help` show each one's examples and options.
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)  # bare `deblur`: a usage error, as argparse's are
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"deblur {version('deblurgan-ray')}")
        except PackageNotFoundError:
            print("deblur (a checkout on the path, not an installed package)")
        sys.exit(0)
    name, rest, prog = (argv[0], argv[1:], f"deblur {argv[0]}") if argv[0] in STAGES else ("photo", argv, "deblur")
    if argv[0] == "photo":  # `deblur photo --help`, or a photo named like a sub-command: `deblur photo train`
        rest, prog = argv[1:], "deblur photo"
    module = importlib.import_module(f"{__name__}.{name}")
    run(lambda a: module.main(a, prog=prog), rest)


def job(name: str) -> None:
    """A checkout's `jobs/<script>.py`: the stage `name` with the script's own name in its usage line."""
    module = importlib.import_module(f"{__name__}.{name}")
    run(module.main, sys.argv[1:])
