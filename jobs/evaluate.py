"""`deblur evaluate` from a checkout, with the same options (deblur/cli/evaluate.py; --help shows them):
`python jobs/evaluate.py ...`, or `ray job submit --working-dir . -- python jobs/evaluate.py ...` on a cluster."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's deblur, also under --working-dir

from deblur.cli import job  # noqa: E402

if __name__ == "__main__":
    job("evaluate")
