"""The progress bar of a snapshot, on stderr when it is a terminal.

Nothing is drawn for the first second (snapshots are usually faster than
that), nor ever when stderr is not a terminal.  SNAPCORE_PROGRESS_DELAY
(seconds) changes the first second; it exists for snapcore's own tests.
"""

import os
import shutil
import time

from ..units import human

DELAY_ENV = "SNAPCORE_PROGRESS_DELAY"


def _duration(seconds):
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    """callable(bytes_done, bytes_total), as snapshot(progress=...) calls it."""

    def __init__(self, stream, delay=None):
        self.stream = stream
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        if delay is None:
            try:
                delay = float(os.environ.get(DELAY_ENV, "1"))
            except ValueError:
                delay = 1.0
        self.delay = delay
        self.t0 = time.monotonic()
        self.first = None  # (time, bytes) of the first report
        self.shown = False

    def __call__(self, done, total):
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        if now - self.t0 < self.delay:
            return
        t1, d1 = self.first
        rate = (done - d1) / (now - t1) if now > t1 and done > d1 else 0.0
        eta = f"ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        frac = min(1.0, done / total)
        cols = shutil.get_terminal_size((80, 24)).columns
        width = max(10, min(40, cols - 52))
        fill = int(frac * width)
        bar = "=" * fill + (">" if fill < width else "") + " " * (width - fill - 1)
        line = f"[{bar}] {frac * 100:3.0f}% {human(done)}/{human(total)} {human(rate)}/s {eta}"
        self.stream.write("\r" + line[: cols - 1] + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self):
        """Erase the bar, so that what follows starts on a clean line."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
