"""Models that ship inside the package, by name: what every job uses when no model is given.

`load_engine("default")`, `--model default` (or no `--model` at all) deblur with `DEFAULT`, the kernel-aware
route `deblur-shake-v1` (`deblur.kernel.route`): each photo through the shipped network `NETWORK`, or
deconvolved with its own blur kernel when it is shaken. Where a network itself is needed (a checkpoint to
compile, to fine-tune from, `load_generator("default")`, and video, whose frames a per-frame kernel would make
flicker), "default" means `NETWORK`. Each has a model card (`weights/<name>.md`): how it was made and what it
scores. A shipped name is only ever looked up here, never on storage, so a folder called `default` next to the
user's photos cannot be mistaken for it: pass `./default` for that.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).with_name("weights")
DEFAULT = "deblur-shake-v1"  # what photos are deblurred with when no model is named (a route, not a file)
NETWORK = "deblur-nafnet-v1"  # the shipped network: the default's fallback, and "default" as a checkpoint
ALIASES = {"default": NETWORK}


def shipped_models() -> list[str]:
    return sorted(p.stem for p in WEIGHTS.glob("*.pt"))


def shipped_path(name: str) -> str | None:
    """The file of a shipped model's name (or alias), else None."""
    name = ALIASES.get(str(name), str(name))
    path = WEIGHTS / f"{name}.pt"
    return str(path) if "/" not in name and path.is_file() else None


def model_card(name: str = DEFAULT) -> Path:
    """The card of a shipped model or route; "default" is the default route's."""
    return WEIGHTS / f"{DEFAULT if name == 'default' else name}.md"


def package(checkpoint: str, name: str, half: bool = True, folder: Path = WEIGHTS) -> Path:
    """A training checkpoint (file, Ray checkpoint dir or run dir) → `folder/<name>.pt`: the generator only
    (no critic, no optimiser state), in fp16 when `half` (weights load back as fp32; the difference is below
    8-bit rounding), plus what it was trained with. This is the file that ships."""
    import io

    import torch

    from .checkpoint import FORMAT, read_checkpoint
    from .reference import resolve_checkpoint

    source = resolve_checkpoint(checkpoint)
    obj = read_checkpoint(source)
    if obj.get("format") != FORMAT:
        raise ValueError(f"{checkpoint}: not a deblur training checkpoint")
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in obj["generator"].items()}
    shipped = {
        "format": FORMAT,
        "generator_name": obj["generator_name"],
        "generator_kwargs": obj["generator_kwargs"],
        "generator": state,
        "name": name,
        "epoch": obj.get("epoch"),
        "step": obj.get("step"),
        "metrics": obj.get("metrics", {}),
        "config": obj.get("config", {}),
    }
    buf = io.BytesIO()
    torch.save(shipped, buf)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    path.write_bytes(buf.getvalue())
    return path


def main() -> None:
    """`python -m deblur.models.shipped RUN [--name NAME]`: package a run's best checkpoint as a shipped model."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("checkpoint", help="run dir (best.json), Ray checkpoint dir or checkpoint file")
    p.add_argument("--name", default=NETWORK)
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, half the size)")
    args = p.parse_args()
    path = package(args.checkpoint, args.name, half=not args.fp32)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); describe it in {model_card(args.name)}")


if __name__ == "__main__":
    main()
