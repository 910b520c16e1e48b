"""What every job shares: import path, one-line errors instead of traceback walls, logging."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `ray job submit --working-dir .` ships the repo; make `deblur` importable
    sys.path.insert(0, str(ROOT))


def run(main: Callable[[list[str] | None], int]) -> None:
    """Run a job's main; user errors (ValueError/OSError and subclasses) become one line on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = main(None)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    sys.exit(code)
