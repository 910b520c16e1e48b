"""The evaluation report: metrics.json, metrics.csv, comparison grids, training curves, index.html."""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

import cv2
import numpy as np

from .. import storage
from ..images import decode_image, encode_png
from ..metrics import PSNR_CAP
from .scoring import METHOD_NAMES, METHODS, output_name, ranked


def _label(img: np.ndarray, text: str, scale: float) -> np.ndarray:
    """A white caption bar above the image; `scale` keeps text readable when the browser shrinks the grid."""
    height = int(30 * scale)
    bar = np.full((height, img.shape[1], 3), 255, np.uint8)
    cv2.putText(
        bar,
        text,
        (int(8 * scale), height - int(9 * scale)),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.7 * scale,
        (0, 0, 0),
        max(1, int(round(1.5 * scale))),
        cv2.LINE_AA,
    )
    return np.concatenate([bar, img])


def sharpest_window(sharp: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size×size window with the most gradient energy: where blur shows most."""
    gray = cv2.cvtColor(sharp, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    box = cv2.boxFilter(energy, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    half = size // 2
    h, w = gray.shape
    inner = box[half : max(half + 1, h - size + half + 1), half : max(half + 1, w - size + half + 1)]
    i, j = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(i), int(j)


def _side_by_side(images: list[np.ndarray], gap: int) -> np.ndarray:
    """Equal-height images joined left to right with white gaps between them."""
    spacer = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([c for img in images for c in (img, spacer)][:-1], axis=1)


def comparison_grid(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """Row 1: the full images with labels; row 2: the same sharpest-edge crop of each, enlarged to the
    width of a panel (nearest neighbour: pixels stay pixels)."""
    sharp = panels[-1][1]
    h, w = sharp.shape[:2]
    size = max(16, min(h, w, 128) // 2 * 2)
    i, j = sharpest_window(sharp, size)
    zoom = max(1, w // size)
    text = max(1.0, len(panels) * w / 1000)  # the page shows the grid about 1000 px wide
    gap = 8
    top = _side_by_side([_label(img, name, text) for name, img in panels], gap)
    crops = [
        cv2.resize(img[i : i + size, j : j + size], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        for _, img in panels
    ]
    row = _side_by_side(crops, gap)
    width = max(top.shape[1], row.shape[1])

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255)

    caption = f"the same {size}x{size} region of each, where the sharp image has the most edges (x{zoom})"
    return np.concatenate([pad(top), np.full((gap, width, 3), 255, np.uint8), pad(_label(row, caption, text))])


def training_curves(metrics_jsonl: str) -> bytes | None:
    """PNG of losses and val PSNR/SSIM per epoch from a run's metrics.jsonl (None without one)."""
    if not storage.exists(metrics_jsonl):
        return None
    rows = [json.loads(line) for line in storage.read_text(metrics_jsonl).splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("loss_g", "loss_l1", "loss_fft", "loss_per", "loss_d"):
        if any(r.get(key) for r in rows):
            axes[0].plot(epochs, [r.get(key) for r in rows], label=key)
    axes[0].set_title("losses")
    for ax, metric in ((axes[1], "psnr"), (axes[2], "ssim")):
        ax.plot(epochs, [r.get(f"val_{metric}") for r in rows], marker="o", label="output")
        if "val_" + metric + "_input" in rows[0]:
            ax.plot(epochs, [r.get(f"val_{metric}_input") for r in rows], linestyle="--", label="blurred input")
        ax.set_title(f"validation {metric.upper()}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any, metric: str) -> str:
    if value is None:
        return "–"
    if metric == "psnr":
        return f"≥{PSNR_CAP:.0f} (identical, capped)" if value >= PSNR_CAP else f"{value:.2f}"
    return f"{value:.4f}"


def real_photo_grids(
    engine: Any, folder: str, out: str, limit: int = 12, others: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """Blurred photos without a sharp truth (real camera shake): grids of input | unsharp mask | each of `others`
    (label → engine: models to compare with, such as the previous shipped one) | model, written under
    `out/real/`; returns (photo name, grid file) pairs. Unreadable files are skipped and named."""
    from ..images import IMAGE_SUFFIXES, ImageError, read_image
    from .baselines import unsharp

    uris = [u for u in storage.listdir(folder) if u.lower().endswith(IMAGE_SUFFIXES)][:limit]
    if not uris:
        raise ValueError(f"{folder}: no images to show (looked for {', '.join(IMAGE_SUFFIXES)})")
    grids = []
    for uri in uris:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            blur = read_image(uri)
        except ImageError as e:
            print(f"skipped {e}")
            continue
        compared = [(label, other.deblur_image(blur)) for label, other in (others or {}).items()]
        grid = comparison_grid(
            [("blurred", blur), ("unsharp mask", unsharp(blur)), *compared, ("model", engine.deblur_image(blur))]
        )
        path = "real/" + output_name(name.rsplit(".", 1)[0])
        storage.write_bytes(storage.join(out, path), encode_png(grid))
        grids.append((name, path))
    return grids


def keys_to_show(records: list[dict[str, Any]], max_grids: int = 24) -> list[str]:
    """The images the report draws: the best and worst five by gain, then the first ones up to `max_grids`."""
    best, worst = ranked(records)
    return list(dict.fromkeys([r["key"] for r in best + worst] + [r["key"] for r in records[:max_grids]]))


def write_report(
    out: str,
    header: dict[str, Any],
    records: list[dict[str, Any]],
    summary: dict[str, Any],
    rows_by_key: dict[str, dict[str, Any]],
    curves: bytes | None = None,
    real: list[tuple[str, str]] = (),
    shown: list[str] | None = None,
    real_columns: str = "blurred | unsharp mask | model",
) -> list[str]:
    """Write every report file under `out`; returns their names. `rows_by_key` needs only the `shown` rows."""
    written = ["metrics.json", "metrics.csv", "index.html"]
    storage.write_text(
        storage.join(out, "metrics.json"),
        json.dumps({"header": header, "summary": summary, "images": records}, indent=2),
    )
    buf = io.StringIO()
    fields = sorted({k for r in records for k in r}, key=lambda k: (k != "key", k))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(records)
    storage.write_text(storage.join(out, "metrics.csv"), buf.getvalue())

    best, worst = ranked(records)
    grids = {}
    for key in shown if shown is not None else keys_to_show(records):
        row = rows_by_key[key]
        blur, sharp = decode_image(bytes(row["blur"]), key), decode_image(bytes(row["sharp"]), key)
        output = decode_image(storage.read_bytes(storage.join(out, "outputs", output_name(key))), key)
        name = "grids/" + output_name(key)
        storage.write_bytes(
            storage.join(out, name),
            encode_png(comparison_grid([("blurred", blur), ("deblurred", output), ("sharp", sharp)])),
        )
        grids[key] = name
        written.append(name)
    if curves:
        storage.write_bytes(storage.join(out, "curves.png"), curves)
        written.append("curves.png")
    written += [path for _, path in real]
    storage.write_text(
        storage.join(out, "index.html"),
        _html(header, records, summary, best, worst, grids, bool(curves), real, real_columns),
    )
    return written


def _html(
    header, records, summary, best, worst, grids, curves, real=(), real_columns="blurred | unsharp mask | model"
) -> str:
    e = html.escape
    metrics = ["psnr", "ssim"] + (["lpips"] if "output_lpips" in summary else [])
    names = METHOD_NAMES
    head = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in header.items())
    rows = "".join(
        f"<tr><td>{e(names[m])}</td>"
        + "".join(f"<td>{_fmt(summary.get(f'{m}_{x}'), x)}</td>" for x in metrics)
        + "</tr>"
        for m in METHODS
        if f"{m}_psnr" in summary
    )
    per_image = "".join(
        f"<tr><td>{e(r['key'])}</td><td>{r['width']}×{r['height']}</td>"
        + "".join(f"<td>{_fmt(r.get(f'{m}_{x}'), x)}</td>" for m in METHODS for x in metrics if f"{m}_{x}" in r)
        + f"<td>{r['gain_psnr']:+.2f}</td></tr>"
        for r in records
    )
    cols = "".join(f"<th>{e(names[m])} {x.upper()}</th>" for m in METHODS for x in metrics if f"{m}_{x}" in records[0])

    def gallery(title: str, items: list[dict]) -> str:
        figs = "".join(
            f"<figure><img src='{e(grids[r['key']])}' alt='{e(r['key'])}'><figcaption>{e(r['key'])}: "
            f"{r['input_psnr']:.2f} → {r['output_psnr']:.2f} dB ({r['gain_psnr']:+.2f})</figcaption></figure>"
            for r in items
            if r["key"] in grids
        )
        return f"<h2>{e(title)}</h2>{figs}"

    real_html = "".join(
        f"<figure><img src='{e(path)}' alt='{e(name)}'><figcaption>{e(name)}</figcaption></figure>"
        for name, path in real
    )
    if real_html:
        real_html = f"<h2>Real blurred photos (no sharp truth): {e(real_columns)}</h2>" + real_html
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>deblur evaluation</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}img{{max-width:100%}}
table.header td,table.header th{{text-align:left}}
figure{{margin:1em 0}}</style></head><body>
<h1>Evaluation: {summary["images"]} images, PSNR gain {summary.get("gain_psnr", 0):+.2f} dB</h1>
<table class="header">{head}</table>
<h2>Summary (means)</h2><table><tr><th>method</th>{"".join(f"<th>{x.upper()}</th>" for x in metrics)}</tr>{rows}</table>
{"<h2>Training curves</h2><img src='curves.png' alt='training curves'>" if curves else ""}
{gallery("Best five (largest PSNR gain)", best)}
{gallery("Worst five (smallest PSNR gain)", worst)}
<h2>Every image</h2><table><tr><th>image</th><th>size</th>{cols}<th>gain dB</th></tr>{per_image}</table>
{real_html}
</body></html>"""
