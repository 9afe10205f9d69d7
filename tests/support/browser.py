"""Headless Chromium for the tests that look at a page as a person does (the docs, the dashboard)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")


def chromium(home: Path, *args: str, budget_ms: int = 15000, timeout: float = 90) -> bytes:
    """Run headless Chromium with ``args`` (a URL and what to do with it); its standard output. Scripts
    run for ``budget_ms`` of virtual time (timers fast-forward while nothing else is pending). Only
    127.0.0.1 resolves, so a page that needed a CDN would not render. Chromium writes only under ``home``."""
    if CHROMIUM is None:  # never a skip: `make test` installs it (scripts/system_deps.sh test)
        pytest.fail("chromium is not installed: run scripts/system_deps.sh test as root, or apt-get install chromium")
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={home / 'profile'}",
            f"--virtual-time-budget={budget_ms}", *args]
    # Its crash reporter keeps its database in the XDG config directory, not in the profile.
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    # A session of its own, so that killing its process group also ends the browser's helpers (the crash
    # reporter, in a group of its own, exits when the browser does).
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}:\n{err.decode()[-3000:]}"
    return out


def rendered_dom(url: str, home: Path, timeout: float = 90, budget_ms: int = 15000) -> str:
    """The DOM of ``url`` once headless Chromium has run its scripts."""
    out = chromium(home, "--dump-dom", url, budget_ms=budget_ms, timeout=timeout)
    assert out, "chromium printed no DOM"
    return out.decode()


def screenshot(url: str, home: Path, path: Path, size: tuple[int, int] = (1280, 1000), budget_ms: int = 15000) -> None:
    """A PNG of ``url`` as a ``size`` window shows it, once its scripts have run, written to ``path``."""
    chromium(home, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars", url,
             budget_ms=budget_ms)
    assert path.exists() and path.read_bytes().startswith(b"\x89PNG"), f"chromium wrote no screenshot to {path}"
