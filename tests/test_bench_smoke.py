"""`blokauto bench` must keep working end to end (its figures are read by people, not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert report["blokauto"]["cpu_us_per_tx"] > 0                # the machine's CPU spent per committed tx
    assert any(line.startswith("blokauto (") and line.endswith("tx/s") for line in report["lines"])
    parts = report["parts"]
    # the registrations, the fleet and the recall all went through the contracts
    assert parts["recall_fleet"]["affected"] == 10 and parts["recall_full"]["affected"] == 20
    assert any(line.startswith("parts: bulk registration") for line in parts["lines"])
    data = report["vehicle_data"]
    assert data["ingested"] >= 57_600 and data["baseline"]["batches"] > 0
    assert any(line.startswith("vehicle data: telematics ingestion") for line in data["lines"])


def test_reports_ledger_is_kept_resumed_and_checked(tmp_path: Path) -> None:
    """--reports-data: an interrupted build resumes where it stopped and makes the same log as an
    uninterrupted one; a kept ledger is measured again without rebuilding; another size is refused."""
    from blokauto import demo
    from blokauto.bench_reports import build_fleet, fleet_plan, run_report_bench
    from blokauto.errors import InputError
    from blokauto.ledger.store import Store
    from blokauto.node import init_ledger

    assert len(fleet_plan(60, 3)) == 4                           # one signing job per round for a small fleet
    genesis = demo.demo_genesis(time_ms=1_600_000_000_000)
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    for data in (whole, pieces):
        init_ledger(data, genesis, demo.OPERATOR_ORG, demo.demo_node_key(demo.OPERATOR_ORG).signing_key)
    assert build_fleet(whole, 60, 3, lambda _m: None) == 240
    assert build_fleet(pieces, 60, 3, lambda _m: None, max_jobs=2) == 120     # interrupted after 2 jobs
    assert build_fleet(pieces, 60, 3, lambda _m: None) == 240                 # resumed: the other 2
    logs = []
    for data in (whole, pieces):
        store = Store(data)
        try:
            logs.append(store.writer.execute("SELECT txhash FROM leaves ORDER BY idx").fetchall())
            assert store.head_height() == (1 if data == whole else 2)            # 4 jobs a block
        finally:
            store.close()
    assert len(logs[0]) == 240 and logs[0] == logs[1]           # the same transactions in the same order

    first = run_report_bench(60, 3, samples=5, data_dir=whole)   # an unlabelled ledger: finishes the build
    assert first["log_size"] == 240 and len(first["report_ms"]) == 5
    again = run_report_bench(60, 3, samples=5, data_dir=whole, seed=7)
    assert again["build_s"] == 0 and again["log_size"] == 240 and "built by an earlier run" in again["lines"][0]
    assert again["seed"] == 7 and "not read before (seed 7)" in again["lines"][1]   # a kept ledger is measured cold
    assert len(again["report_warm_ms"]) == 5
    with pytest.raises(InputError) as refused:
        run_report_bench(61, 3, samples=5, data_dir=whole)
    assert refused.value.code == "bench_data_mismatch"
