"""`pacs-annotator worker` whose jobs stall before annotating: a fault test kills it mid-job.

Test-only: ``python -m tests.support.slow_worker worker --config FILE`` with
``PA_TEST_SLOW_SECONDS`` (the stall) and ``PA_TEST_SLOW_MARKERS`` (a folder that gets one file
per job when it starts stalling, so the test knows when the job is in the middle).
Nothing of this reaches the product: it wraps the real worker from the outside.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.runner import StudyResult
from worker.cli import main
from worker.run import processing


def install_stall(markers: Path, seconds: float) -> None:
    original = processing.annotate_study

    def stalled(*args: Any, **kwargs: Any) -> StudyResult:
        markers.mkdir(parents=True, exist_ok=True)
        (markers / f"started-{os.getpid()}-{time.time_ns()}").write_text("stalling\n")
        time.sleep(seconds)
        return original(*args, **kwargs)

    processing.annotate_study = stalled  # type: ignore[assignment]


if __name__ == "__main__":
    install_stall(
        Path(os.environ["PA_TEST_SLOW_MARKERS"]), float(os.environ["PA_TEST_SLOW_SECONDS"])
    )
    sys.exit(main(sys.argv[1:]))
