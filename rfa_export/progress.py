"""Step-by-step progress on stderr for long-running commands."""

import sys
import time
from contextlib import contextmanager


class Progress:
    """`with progress.step("tracing"):` prints the step and, when it ends, how long it took."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr

    @contextmanager
    def step(self, what: str):
        start = time.perf_counter()
        if self.enabled:
            print(f"  {what} ...", end="", file=self.stream, flush=True)
        try:
            yield
        except BaseException:
            if self.enabled:
                print(" failed", file=self.stream, flush=True)
            raise
        if self.enabled:
            print(f" {time.perf_counter() - start:.1f} s", file=self.stream, flush=True)


SILENT = Progress(enabled=False)
