"""Collects the rows the benchmarks record. The runner (benchmarks/run.py, i.e. `make bench`) writes
them to benchmarks/results/<device>-<date>.{csv,md,png}; a partial ad-hoc pytest run only prints its
tables, so it never overwrites a full result set (set SNN_FAST_BENCH_OUT to write one anyway)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("SNN_FAST_BENCH_OUT")
    if not out:
        return
    from benchmarks import common

    for p in common.write_results(out):
        print(f"\nwrote {p}")
