"""bench/run.py, small: its supervise adapter runs every scenario against this checkout.

The full suite (bench/setup.sh, then bench/run.py) compares supervise with supervisord, circus
and honcho and takes minutes; it is not part of CI. This test runs only the supervise adapter,
with 5 services and few iterations, in the test venv (``python -m supervisor``), so a change to
the CLI, the config format or the log layout that breaks the benchmark shows up here.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    path = ROOT / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("supervise_bench_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = load_bench()

PARAMS = bench.Params(sizes=[5], idle_s=0.3, restart_n=5, kills=2, log_lines=2000, log_repeats=1,
                      status_runs=1, settle=0.2, grace=10.0, quick=True)


def factory(name, workdir):
    assert name == "supervise"
    return bench.Supervise(workdir, command=[sys.executable, "-m", "supervisor"], python=sys.executable)


def run(scenario: str) -> dict:
    case = bench.SCENARIOS[scenario]
    record = bench.run_one(case, "supervise", case.ns(PARAMS)[0], PARAMS, factory)
    assert "error" not in record, record
    return record


@pytest.mark.timeout(60)
def test_supervise_adapter_runs_every_scenario():
    began = time.monotonic()
    # cold, idle, status, reload and stop on one supervisor, as a full run measures them
    fused = {r["scenario"]: r for r in bench.run_fused(list(bench.FUSED), "supervise", 5, PARAMS, factory)}
    for record in fused.values():
        assert "error" not in record, record
    cold = fused["cold"]
    assert 0 < cold["start_s"] < 10 and cold["rss_mb"] > 0 and cold["pss_mb"] > 0 and cold["own_procs"] >= 1
    assert fused["idle"]["cpu_s"] >= 0
    assert fused["status"]["p50_s"] > 0
    assert fused["reload"]["restarted"] == 1 and fused["reload"]["collateral"] == 0, fused["reload"]
    stop = fused["stop"]
    assert stop["survivors"] == 0 and stop["stop_s"] is not None and stop["exit_s"] is not None

    restart = run("restart")
    assert restart["kills"] == 2 and restart["p50_ms"] < 5000

    for scenario in ("logs", "logs-raw"):
        logs = run(scenario)
        assert logs["complete"] and logs["lines"] == 2000 and logs["writer_s"] > 0
        assert (logs["missing"], logs["duplicated"], logs["reordered"], logs["damaged"]) == (0, 0, 0, 0)
    assert time.monotonic() - began < 30


def test_ratio_tables_and_targets_from_records():
    records = [
        {"scenario": "cold", "supervisor": "supervise", "n": 500, "start_s": 1.0, "rss_mb": 50.0, "pss_mb": 20.0},
        {"scenario": "cold", "supervisor": "supervisord", "n": 500, "start_s": 4.0, "rss_mb": 30.0, "pss_mb": 25.0},
        {"scenario": "cold", "supervisor": "circus", "n": 500, "start_s": 2.5, "rss_mb": 60.0, "pss_mb": 45.0},
        {"scenario": "cold", "supervisor": "limit", "n": 500, "start_s": 0.4, "rss_mb": 1.0, "pss_mb": 0.1},
        {"scenario": "cold", "supervisor": "supervise", "n": 2000, "start_s": 5.0, "rss_mb": 80.0, "pss_mb": 50.0},
        {"scenario": "cold", "supervisor": "circus", "n": 2000, "start_s": 10.0, "rss_mb": 60.0, "pss_mb": 45.0},
        {"scenario": "restart", "supervisor": "honcho", "n": 200, "skipped": "never restarts"},
        {"scenario": "restart", "supervisor": "supervise", "n": 200, "p50_ms": 60.0, "p95_ms": 90.0},
    ]
    names = ["supervise", "supervisord", "circus", "honcho", "limit"]
    text = "\n".join(bench.table(records, names))
    assert "1 (0.40x)" in text and "2.5 (1.00x)" in text and "n/a" in text
    tables = "\n".join(bench.metric_tables(records, names))
    assert "supervise / limit" in tables and "2.50x" in tables       # 1.0 / 0.4
    assert "2000/500" in tables and "5.00" in tables                 # supervise grew 5x
    verdicts = {t: ok for t, _, _, ok in bench.targets(records)}
    assert verdicts["cold start of 500 <= 0.5x best peer"] == "met"        # 1.0 <= 2.5 / 2
    assert verdicts["cold start of 500 <= 2x the limit"] == "MISSED"        # 1.0 > 2 * 0.4
    assert verdicts["cold start of 2000 <= 4.5x cold start of 500"] == "MISSED"
    assert verdicts["supervisor PSS at 500 <= supervisord's (MB)"] == "met"
    assert verdicts["restart after SIGKILL p50 < 50 ms"] == "MISSED"
    assert verdicts["idle at 2000: 0 CPU-seconds in - s"] == "unknown"
