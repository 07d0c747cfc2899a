"""Writes benchmarks/results/<device>-<date>.{csv,md,png} from the rows the benchmarks recorded."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_sessionfinish(session, exitstatus):
    from benchmarks import common

    out = os.environ.get("SNN_FAST_BENCH_OUT", os.path.join(os.path.dirname(__file__), "results"))
    for p in common.write_results(out):
        print(f"\nwrote {p}")
