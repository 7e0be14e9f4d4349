"""`blokauto bench` must keep working end to end (its figures are read by people, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_quick_json_runs_the_real_path() -> None:
    result = subprocess.run([sys.executable, "-m", "blokauto.cli.main", "bench", "--quick", "--json"],
                            capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transactions"] == 2000
    assert report["blokauto"]["committed_ok"] == 2000          # every transaction committed, none refused
    assert report["blokauto"]["log_size"] == 2000
    assert len(report["blokauto"]["rss_mb_by_quarter"]) == 5
    assert any(line.startswith("blokauto (") and line.endswith("tx/s") for line in report["lines"])
    parts = report["parts"]
    # the registrations, the fleet and the recall all went through the contracts
    assert parts["recall_fleet"]["affected"] == 10 and parts["recall_full"]["affected"] == 20
    assert any(line.startswith("parts: bulk registration") for line in parts["lines"])
    data = report["vehicle_data"]
    assert data["ingested"] >= 57_600 and data["baseline"]["batches"] > 0
    assert any(line.startswith("vehicle data: telematics ingestion") for line in data["lines"])
