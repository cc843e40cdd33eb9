"""A child process for plain (non-reactor) tests: its output read by a thread, and a wait
for a line that wakes when the line arrives (or the child ends), never a sleep-and-poll."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import Sequence


class Child:
    """`args` run with stdout and stderr merged; the output is kept (and copied to `log`)."""

    def __init__(self, args: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path | None = None):
        self.proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._text = ""
        self._changed = threading.Condition()
        self._ended = False
        self._log = open(log, "w") if log is not None else None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace")
            with self._changed:
                self._text += line
                if self._log is not None:
                    self._log.write(line)
                    self._log.flush()
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return self._text

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of `pattern` in the output, once it is there; AssertionError if the
        child ends or `timeout` passes first."""
        with self._changed:
            found: list[re.Match[str]] = []

            def ready() -> bool:
                m = re.search(pattern, self._text)
                if m:
                    found.append(m)
                return bool(m) or self._ended

            self._changed.wait_for(ready, timeout)
            if found:
                return found[0]
            why = f"ended ({self.proc.poll()})" if self._ended else f"no {pattern!r} within {timeout}s"
            raise AssertionError(f"child {why}:\n{self._text[-3000:]}")

    def stop(self, signal_number: int, timeout: float) -> str:
        """Send `signal_number`, wait for the end (killed after `timeout`); the whole output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal_number)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout)
        if self._log is not None:
            self._log.close()
        return self.output()
