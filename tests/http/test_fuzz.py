"""Fuzzing (issue 13): schemathesis, driven by /openapi.json, against a real hostd over a real socket, with
every check it has: no server error, every status, content type and body as documented, schema-violating
requests refused and schema-valid ones accepted, unsupported methods answered 405 with Allow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.e2e import REAL_MODELS, Start, problems_logged

pytestmark = pytest.mark.e2e

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
#: Fixed, so CI gets the same requests every run; HOSTD_FUZZ_SEED=N explores others.
SEED = int(os.environ.get("HOSTD_FUZZ_SEED", "13"))
#: Cases per operation and phase: with 21 operations, ~1,400 requests in ~20 s on a quiet machine.
MAX_EXAMPLES = 25
#: The run's bound: schemathesis has no total-time limit that does not also extend the run (--max-time
#: repeats fuzzing until it is spent), so the examples bound it and this only guards against a hang.
RUN_TIMEOUT_S = 150
CONFIG = """
[checks]
enabled = true

# An infer request's schema cannot say which tensors a model takes (names, datatypes, and shapes whose
# product is the data's length), so most schema-valid requests are rightly refused with 400.
[[operations]]
include-operation-id = ["v2_infer", "v2_infer_version"]
checks.positive_data_acceptance.enabled = false
"""


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_schemathesis_finds_nothing(start_hostd: Start, tmp_path: Path) -> None:
    server = start_hostd({"models": REAL_MODELS})
    paths = httpx.get(f"{server.url}/openapi.json", timeout=5).json()["paths"]
    operations = sum(len(path) for path in paths.values()) - 1  # schemathesis leaves out GET /openapi.json
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    argv = [SCHEMATHESIS, "--config-file", str(config), "--no-color", "run", f"{server.url}/openapi.json",
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
            "--generation-database", "none", "--request-timeout", "10", "--continue-on-failure"]
    # cwd: schemathesis keeps its cache (.schemathesis) in the working directory.
    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-30_000:]
    assert f"Selected: {operations}/{operations}" in report and f"Tested: {operations}" in report, report[-5000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and int(generated[1]) >= operations * MAX_EXAMPLES, report[-5000:]
    assert problems_logged(server.output()) == []
