"""Autobahn|Testsuite (via kosoku) against the echo app: sections 1-10."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from .serverproc import start_server

PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}


@pytest.mark.slow
def test_autobahn_sections_1_to_10(tmp_path: Path) -> None:
    kosoku = shutil.which("kosoku") or str(Path(sys.executable).with_name("kosoku"))
    # Section 9 sends messages (and single frames) up to 16 MiB.
    server = start_server("tests.apps.ws:echo", "--websocket-max-message-size", "20000000",
                          "--websocket-max-frame-size", "20000000")
    try:
        result = subprocess.run(
            [kosoku, f"127.0.0.1:{server.port}", "-x", "12.*", "-x", "13.*",
             "-p", "2", "-o", str(tmp_path)],
            capture_output=True, text=True, timeout=600,
        )
    finally:
        assert server.stop() == 0, server.log_tail()
    index = json.loads((tmp_path / "index.json").read_text())
    cases = next(iter(index.values()))
    behaviours = Counter(case["behavior"] for case in cases.values())
    closes = Counter(case["behaviorClose"] for case in cases.values())
    failed = {cid: case["behavior"] for cid, case in cases.items()
              if case["behavior"] not in PASSING or case["behaviorClose"] not in PASSING}
    print(f"Autobahn: {len(cases)} cases, {dict(behaviours)}, close {dict(closes)}")
    assert len(cases) > 290
    assert failed == {}, failed
    assert result.returncode == 0, result.stdout + result.stderr
