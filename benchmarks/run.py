"""`make bench`: run the benchmark suite on this machine's device, print the tables, and write
benchmarks/results/<device>-<date>.{csv,md,png}."""
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
args = [sys.executable, "-m", "pytest", here, "-q", "-s", "-p", "no:cacheprovider", "--benchmark-only",
        "--benchmark-columns=median,iqr,rounds"] + sys.argv[1:]
env = dict(os.environ)
env.setdefault("SNN_FAST_BENCH_OUT", os.path.join(here, "results"))
sys.exit(subprocess.call(args, cwd=os.path.dirname(here), env=env))
