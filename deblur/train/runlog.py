"""Rank 0's record of a run: `metrics.jsonl` and TensorBoard event files, kept beside the checkpoints.

They are written to a local staging folder and copied to the run folder in storage (local or S3) after
every epoch, so a user can point TensorBoard at the run and `jobs/evaluate.py` can draw the curves.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from .. import storage

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"


class RunLog:
    def __init__(self, run_uri: str):
        from torch.utils.tensorboard import SummaryWriter

        self.run_uri = run_uri
        self.local = tempfile.mkdtemp(prefix="deblur-runlog-")
        self.metrics_path = os.path.join(self.local, METRICS_FILE)
        previous = storage.join(run_uri, METRICS_FILE)
        if storage.exists(previous):  # resumed run: keep its history
            with open(self.metrics_path, "wb") as f:
                f.write(storage.read_bytes(previous))
        self.tb = SummaryWriter(os.path.join(self.local, TB_DIR))

    def log(self, metrics: dict[str, Any], images: list[tuple[str, np.ndarray]] = ()) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(metrics, sort_keys=True) + "\n")
        step = int(metrics.get("epoch", 0))
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "epoch" and np.isfinite(v):
                self.tb.add_scalar(k, v, step)
        for name, img in images:
            self.tb.add_image(name, img, step, dataformats="HWC")
        self.tb.flush()
        self.sync()

    def sync(self) -> None:
        storage.write_bytes(storage.join(self.run_uri, METRICS_FILE), open(self.metrics_path, "rb").read())
        tb_local = os.path.join(self.local, TB_DIR)
        for name in os.listdir(tb_local):
            storage.write_bytes(
                storage.join(self.run_uri, TB_DIR, name), open(os.path.join(tb_local, name), "rb").read()
            )

    def close(self) -> None:
        self.tb.close()
        self.sync()
