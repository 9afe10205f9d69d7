"""A peer's own venv, made once, and its server process: started in a session of its own, ready when it
answers the benchmark's request with the right species, stopped with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import joblib
import numpy
import orjson
import sklearn
from iris_model.model import load_parameters

from benchmarks.common import IRIS, ROOT

BENCH = ROOT / ".bench"
APPS = Path(__file__).resolve().parent / "apps"
# The estimator is pickled here and unpickled in the peer's venv: it must load there exactly as written.
ESTIMATOR_PINS = [f"scikit-learn=={sklearn.__version__}", f"numpy=={numpy.__version__}",
                  f"joblib=={joblib.__version__}"]
SETOSA = "Iris setosa"  # what every server must answer for the benchmark's row
ROW_JSON = orjson.dumps(IRIS)  # the body hostd's author API and every peer's own JSON endpoint get


def ensure_venv(name: str, requirements: list[str]) -> Path:
    """Create .bench/<name>-venv once (a stamp records what was installed); return its bin directory."""
    path = BENCH / f"{name}-venv"
    stamp = path / ".installed"
    wanted = "\n".join(requirements)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {name} into {path} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        pip = subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", *requirements], capture_output=True, text=True)
        if pip.returncode:
            raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{pip.stderr.strip()[-2000:]}")
        stamp.write_text(wanted)
    return path / "bin"


def dump_estimator(directory: Path) -> Path:
    """hostd's iris LogisticRegression as ``directory``/model.joblib, the file every peer loads."""
    path = directory / "model.joblib"
    joblib.dump(load_parameters(), path)
    return path


def peer_env(**extra: str) -> dict[str, str]:
    """Our environment without our venv and its PYTHONPATH; the peer apps importable."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(APPS), **extra)
    return env


@contextmanager
def serve_app(name: str, argv: list[str], url: str, *, stop_signal: signal.Signals = signal.SIGTERM,
              **variables: str) -> Iterator[tuple[str, bytes]]:
    """Run a peer app (argv, from a work directory of its own) that answers the iris row as hostd's
    author API takes it (ROW_JSON) at ``url``; yield ``url`` and that body. The app finds the estimator
    file at IRIS_JOBLIB; HOME is the work directory, so nothing the peer writes lands in ours."""
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        workdir = Path(tmp)
        env = peer_env(IRIS_JOBLIB=str(dump_estimator(workdir)), HOME=str(workdir), **variables)
        with serve(argv, cwd=workdir, env=env, url=url, body=ROW_JSON, stop_signal=stop_signal):
            yield url, ROW_JSON


@contextmanager
def serve(argv: list[str], *, cwd: Path, env: dict[str, str], url: str, body: bytes,
          stop_signal: signal.Signals = signal.SIGTERM, timeout_s: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends, from when POSTing ``body`` to ``url`` answers 200 and setosa.
    Its output goes to ``cwd``/server.log; ``stop_signal`` is what the server stops cleanly on."""
    log = cwd / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_answering(proc, url, body, log, timeout_s)
            yield proc
        finally:
            stop(proc, stop_signal)


def wait_answering(proc: subprocess.Popen[bytes], url: str, body: bytes, log: Path, timeout_s: float) -> None:
    # A readiness endpoint can say ready before the model is (MLServer's /v2/health/ready with its
    # inference worker dead): the request the benchmark sends is the only proof it is served.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        with suppress(httpx.TransportError):
            reply = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=5)
            if reply.status_code == 200:
                if SETOSA not in reply.text:
                    raise RuntimeError(f"{url} answered {reply.text[:300]!r}, which is not {SETOSA}")
                return
        time.sleep(0.2)
    state = f"exited with code {proc.returncode}" if proc.poll() is not None else f"no 200 within {timeout_s:.0f} s"
    raise RuntimeError(f"{url}: {state}; its log ends:\n{log.read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen[bytes], stop_signal: signal.Signals = signal.SIGTERM) -> None:
    """Stop the server with ``stop_signal``, then whatever it left in its process group (start_new_session
    made proc.pid a group holding only what the server started: workers, resource trackers)."""
    if proc.poll() is None:
        proc.send_signal(stop_signal)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(20)
    deadline = time.monotonic() + 5  # after a clean exit its children may still be tidying up
    while proc.poll() is not None and group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(proc.pid)
    if left:
        print(f"killing what {proc.args[0]} left running: {left}", file=sys.stderr, flush=True)
    with suppress(ProcessLookupError):  # the group is gone: nothing was left
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def group_members(pgid: int) -> list[str]:
    """Live processes in ``pgid``; zombies are dead already, waiting for init to reap them."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(maxsplit=3) for line in out.splitlines()]
    return [" ".join(row) for row in rows if row[1] == str(pgid) and not row[2].startswith("Z")]
