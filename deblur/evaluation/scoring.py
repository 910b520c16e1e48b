"""Score a model on pairs: the output, the blurred input and the classical baselines, side by side.

Each pair is deblurred at full resolution through an `Engine` (the same code the bulk job and the endpoint
use), scored under a protocol, and its output written to `<out>/outputs/<key>.png`, so the report can
show any image later without holding them all in memory.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np

from .. import storage
from ..images import decode_image, encode_png
from ..metrics import PSNR_CAP, score_methods
from ..progress import bar as progress_bar
from .baselines import unsharp, wiener_deconvolve
from .protocols import score

METHODS = ("input", "unsharp", "wiener", "output")  # wiener only where the pair's kernel is known
METHOD_NAMES = {
    "input": "blurred input",
    "unsharp": "unsharp mask",
    "wiener": "Wiener (known kernel)",
    "output": "model output",
}


def output_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") + ".png"


class Scorer:
    """Deblur and score one shard row; holds the engine and LPIPS (one per process or Ray actor)."""

    def __init__(
        self,
        engine_factory: Callable[[], Any],
        out: str,
        protocol: str = "gopro",
        lpips: Any = None,
        baseline: bool = True,
    ):
        self.engine = engine_factory()
        self.out, self.protocol, self.lpips, self.baseline = out, protocol, lpips, baseline

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        key = str(row["key"])
        blur, sharp = decode_image(bytes(row["blur"]), f"{key}/blur"), decode_image(bytes(row["sharp"]), f"{key}/sharp")
        output = self.engine.deblur_image(blur)
        storage.write_bytes(storage.join(self.out, "outputs", output_name(key)), encode_png(output))
        images = {"input": blur, "output": output}
        record: dict[str, Any] = {"key": key, "height": int(sharp.shape[0]), "width": int(sharp.shape[1])}
        if self.baseline:
            images["unsharp"] = unsharp(blur)
            kernel = row.get("kernel")
            if kernel is not None and len(kernel):
                images["wiener"] = wiener_deconvolve(blur, np.stack([np.asarray(r, np.float32) for r in kernel]))
        record.update(score_methods(images, sharp, partial(score, protocol=self.protocol)))
        if self.lpips is not None:
            record.update({f"{method}_lpips": float(self.lpips(img, sharp)) for method, img in images.items()})
        return record

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Ray Data `map` form (one actor per Scorer)."""
        return self.score_row(row)


def score_locally(scorer: Scorer, rows: Iterable[dict[str, Any]], total: int, progress: bool = True) -> list[dict]:
    with progress_bar(total, "evaluating", "img", enabled=progress) as bar:
        records = []
        for r in rows:
            records.append(scorer.score_row(r))
            bar.update(1)
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per method and metric, plus how many PSNRs hit the cap (identical images)."""
    summary: dict[str, Any] = {"images": len(records)}
    for method in METHODS:
        for metric in ("psnr", "ssim", "lpips"):
            values = [r[f"{method}_{metric}"] for r in records if r.get(f"{method}_{metric}") is not None]
            if values:
                summary[f"{method}_{metric}"] = float(np.mean(values))
        capped = sum(1 for r in records if r.get(f"{method}_psnr", 0) >= PSNR_CAP)
        if capped:
            summary[f"{method}_psnr_capped"] = capped
    if records:
        summary["gain_psnr"] = summary["output_psnr"] - summary["input_psnr"]
    return summary


def ranked(records: list[dict[str, Any]], n: int = 5) -> tuple[list[dict], list[dict]]:
    """(best n, worst n) by PSNR gain over the input."""
    order = sorted(records, key=lambda r: r["gain_psnr"], reverse=True)
    return order[:n], order[::-1][:n]
