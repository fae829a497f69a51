"""A quiet console: third-party output of a command goes to a log file, ours to the terminal.

Ray, llama.cpp, CTranslate2 and friends write to the process's stderr from Python (logging,
warnings) and from C++ (Ray's core worker logs straight to file descriptor 2). While `quiet_stderr`
is active, descriptor 2 and `sys.stderr` point at a log file, and the returned stream writes to the
real terminal, for the command's own progress bar and messages. On exit (normal or by an exception,
so tracebacks reach the terminal) everything is put back.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True) -> Iterator[tuple[TextIO, Path | None]]:
    """Yield (terminal stream for our own messages, log file of third-party output or None).

    With `enabled` False nothing is redirected and the stream is `sys.stderr`. The log is removed
    after a clean exit; when the body raises, it is kept and its path is printed on the terminal.
    """
    if not enabled:
        yield sys.stderr, None
        return
    sys.stderr.flush()
    fd, name = tempfile.mkstemp(prefix="opens2s-data-", suffix=".log")
    saved_fd = os.dup(2)
    terminal = os.fdopen(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
    saved_stderr = sys.stderr
    os.dup2(fd, 2)
    os.close(fd)
    # Left open on exit: logging handlers created meanwhile (Ray's) keep a reference to this stream.
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    failed = True
    try:
        yield terminal, Path(name)
        failed = False
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr = saved_stderr
        if failed and Path(name).stat().st_size:
            terminal.write(f"third-party output of this run (Ray, llama.cpp, ...): {name}\n")
        else:
            Path(name).unlink(missing_ok=True)
        terminal.flush()
        terminal.close()
