"""`make bench`: run the benchmark suite on this machine's device, print the tables, and write
benchmarks/results/<device>-<date>.{csv,md,png}.

    python benchmarks/run.py [--full] [pytest args]     # make bench [FULL=1]

By default the CPU run keeps every table at the sizes that finish in about five minutes on a 2-core
machine; ``--full`` (or SNN_FAST_BENCH_FULL=1) adds the long sizes (W2 at n = 2048 on the CPU).
"""
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
argv = sys.argv[1:]
env = dict(os.environ)
if "--full" in argv:
    argv.remove("--full")
    env["SNN_FAST_BENCH_FULL"] = "1"
args = [sys.executable, "-m", "pytest", here, "-q", "-s", "-p", "no:cacheprovider", "--benchmark-only",
        "--benchmark-columns=median,iqr,rounds"] + argv
env.setdefault("SNN_FAST_BENCH_OUT", os.path.join(here, "results"))
sys.exit(subprocess.call(args, cwd=os.path.dirname(here), env=env))
