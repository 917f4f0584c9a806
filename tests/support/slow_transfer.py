"""`pacs-annotator worker` whose downloads from the central node crawl: a fault test kills a
remote worker mid-transfer.

Test-only: ``python -m tests.support.slow_transfer worker --config FILE`` with
``PA_TEST_CHUNK_SECONDS`` (a pause after each downloaded chunk) and ``PA_TEST_SLOW_MARKERS``
(a folder that gets a file when the first chunk is written, so the test knows the transfer
is under way). It wraps the real worker from the outside, at the client's write seam.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from worker.cli import main
from worker.run.transfer import CentralClient


def install_slow_transfer(markers: Path, seconds: float) -> None:
    original = CentralClient.write_chunk

    def slow(self: CentralClient, fh: Any, chunk: bytes) -> None:
        original(self, fh, chunk)
        fh.flush()
        markers.mkdir(parents=True, exist_ok=True)
        (markers / f"transfer-{os.getpid()}-{time.time_ns()}").write_text("transferring\n")
        time.sleep(seconds)

    CentralClient.write_chunk = slow  # type: ignore[method-assign]


if __name__ == "__main__":
    install_slow_transfer(
        Path(os.environ["PA_TEST_SLOW_MARKERS"]), float(os.environ["PA_TEST_CHUNK_SECONDS"])
    )
    sys.exit(main(sys.argv[1:]))
