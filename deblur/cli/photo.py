"""Deblur photos on this machine, in this process: no Ray, no cluster, the shipped model unless --model says.

  deblur photo.jpg                          # writes photo.deblurred.jpg beside it
  deblur a.jpg b.png c.tif                  # each beside its source
  deblur a.jpg b.png -o sharp/              # into a folder, under their own names
  deblur photo.jpg -o sharp.jpg             # one photo, a name of your choosing
  deblur - < photo.jpg > sharp.jpg          # standard input to standard output
  deblur photo.jpg --model runs/sample --engine onnxruntime

EXIF, the ICC profile, orientation, alpha and 16-bit depth are kept as `deblur bulk` keeps them; the output has
the input's format. One bad file is named with its reason and the others go on (exit code 1 if any failed).
Folders, archives and s3:// prefixes: `deblur bulk --input FOLDER --output OUT` (Ray, in parallel, resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import common

STDIO = "-"
SUFFIX = ".deblurred"


class PhotoError(ValueError):
    """A photo argument this command cannot take (a folder, a URI, a name that is not there)."""


def parse(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = common.parser(__doc__, prog)
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files, or - for standard input")
    p.add_argument(
        "-o",
        "--output",
        help=f"the output file (one photo), or a folder (ends with / or exists; several photos); default: "
        f"NAME{SUFFIX}.EXT beside each photo, standard output for -",
    )
    common.add_model_argument(p)
    common.add_engine_arguments(p)
    p.add_argument("--quality", type=int, default=95, choices=range(1, 101), metavar="1-100", help="JPEG/WebP quality")
    args = p.parse_args(argv)
    try:
        args.plan = plan(args.photos, args.output)
    except PhotoError as e:
        p.error(str(e))
    if any(dest == STDIO for _, dest in args.plan) and sys.stdout.isatty():
        p.error("standard output is a terminal: redirect it (> out.jpg) or name a file with -o")
    return args


def plan(photos: list[str], output: str | None) -> list[tuple[str, str]]:
    """(source, destination) per photo, "-" standing for standard input/output; a PhotoError for anything this
    command does not take, before any model loads. A destination is never one of the photos, nor two photos' one
    name; an output that exists already (an earlier run's) is replaced."""
    from deblur.imagefile import FORMATS
    from deblur.images import ARCHIVE_SUFFIXES, VIDEO_SUFFIXES
    from deblur.storage import is_remote

    if STDIO in photos and len(photos) > 1:
        raise PhotoError("- (standard input) is one photo: give it alone")
    for photo in photos:
        if photo == STDIO:
            continue
        if is_remote(photo) or os.path.isdir(photo) or photo.lower().endswith(ARCHIVE_SUFFIXES):
            kind = "an s3:// prefix" if is_remote(photo) else "a folder" if os.path.isdir(photo) else "an archive"
            raise PhotoError(f"{photo}: {kind}; for those: deblur bulk --input {photo} --output OUT (Ray, resumable)")
        if photo.lower().endswith(VIDEO_SUFFIXES):
            raise PhotoError(f"{photo}: a video; for videos: deblur video {photo} OUT.mp4")
        if not os.path.isfile(photo):
            from . import STAGES

            hint = "" if Path(photo).suffix else f" (the sub-commands are {', '.join(STAGES)}; see deblur --help)"
            raise PhotoError(f"{photo}: no such file{hint}")
    into_folder = output is not None and (output.endswith(("/", os.sep)) or os.path.isdir(output) or len(photos) > 1)
    if into_folder and (os.path.isfile(output) or photos == [STDIO]):
        raise PhotoError(f"{output}: several photos go into a folder, one (or -) into a file name")
    if output and output != STDIO and not into_folder and _suffix(output) not in FORMATS:
        raise PhotoError(f"{output}: not an image name; the output's suffix says its format: .{' .'.join(FORMATS)}")
    pairs = []
    for photo in photos:
        if photo == STDIO:
            dest = output or STDIO
        elif into_folder:
            dest = os.path.join(output, os.path.basename(photo))
        elif output:
            dest = output
        else:
            stem, ext = os.path.splitext(photo)
            dest = stem + SUFFIX + ext
        pairs.append((photo, dest))
    sources = {os.path.realpath(s) for s, _ in pairs if s != STDIO}
    for source, dest in pairs:
        if dest != STDIO and os.path.realpath(dest) in sources:
            raise PhotoError(f"{dest}: is one of the photos; choose another -o, no photo is overwritten")
    if len({os.path.realpath(d) for _, d in pairs}) < len(pairs):
        raise PhotoError("two photos would be written to one name: give -o a folder of their own or leave it out")
    return pairs


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower().lstrip(".")


def deblur_file(engine, source: str, dest: str, quality: int) -> tuple[int, int]:
    """Read, deblur and write one photo the way the archive job does (`deblur.imagefile`); (width, height). The
    output has the photo's format, or the one its -o name's suffix says (`-o sharp.png` from a JPEG: a PNG)."""
    from deblur import storage
    from deblur.imagefile import FORMATS, decode, encode

    data = sys.stdin.buffer.read() if source == STDIO else Path(source).read_bytes()
    img = decode(data, "standard input" if source == STDIO else source)
    same = dest == STDIO or _suffix(dest) == _suffix(source)
    payload = encode(engine.deblur_image(img.rgb), img, img.format if same else FORMATS[_suffix(dest)], quality)
    if dest == STDIO:
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
    else:
        storage.write_bytes(dest, payload)  # whole or not at all: a temporary name, then a rename
    return img.rgb.shape[1], img.rgb.shape[0]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse(argv, prog)
    from deblur.imagefile import BadImage
    from deblur.inference import load_engine

    say = sys.stderr if any(d == STDIO for _, d in args.plan) else sys.stdout  # never mixed into an image
    t0 = time.perf_counter()
    engine = load_engine(args.model, args.engine, precision=args.precision)
    info, name = engine.info, args.model
    if name == "default":
        from deblur.models.shipped import DEFAULT

        name = f"{DEFAULT} (the shipped default)"
    print(f"model {name}: {info.backend} {info.precision} on {info.device}, {time.perf_counter() - t0:.1f} s", file=say)
    failed = 0
    for source, dest in args.plan:
        t = time.perf_counter()
        try:
            w, h = deblur_file(engine, source, dest, args.quality)
        except (BadImage, OSError) as e:
            failed += 1
            print(f"error: {source}: {e}", file=sys.stderr)
            continue
        where = "standard output" if dest == STDIO else dest
        name = "standard input" if source == STDIO else source
        print(f"{name} → {where} ({w}×{h}, {time.perf_counter() - t:.1f} s{route_note(engine)})", file=say)
    return 1 if failed else 0


def route_note(engine) -> str:
    """What a kernel-aware route (the default, `deblur-shake-v1`) did with the last photo; nothing for a network."""
    decisions = getattr(engine, "decisions", None)
    if not decisions:
        return ""
    d = decisions[0]
    if d.route == "kernel":
        how = " by total variation (the photo is noisy)" if d.deconvolution == "tv" else ""
        return f", deconvolved with its own {d.kernel.shape[1]}×{d.kernel.shape[0]} px blur kernel{how}"
    why = WHY_NETWORK.get(d.reason, d.reason).format(min_size=engine.recipe.min_size)
    return f", through the network ({why})"


#: a route's reasons for the network, as a user reads them (`deblur.kernel.route.decide`)
WHY_NETWORK = {
    "tiny": "too small to read a blur kernel from",
    "sharp": "sharp already",
    "unsure": "its blur estimates disagreed",
    "small": "blur under {min_size} px",
}
