"""The GPU check's build stage, first half: use the carried snn_fast._C (scripts/gpu_build_ext.sh) when
it was built from this tree and loads here with its CUDA kernels; exit 0. Otherwise exit 1 and say
why, and the stage builds the extension on the GPU machine as before.

    python scripts/gpu/use_prebuilt_ext.py [--dir .gpu_ext]
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What must hold in a fresh interpreter with the library in place: it loads, and the LIF and
# Tempotron ops have CUDA kernels (a CPU-only build loads too, but would leave the CUDA stages empty).
PROBE = (
    "import torch, snn_fast, sys\n"
    "assert snn_fast.HAS_C, snn_fast._ext.C_IMPORT_ERROR\n"
    "ops = ('lif_fwd', 'lif_bwd', 'tempotron_fwd')\n"
    "for op in ops:\n"
    "    assert torch._C._dispatch_has_kernel_for_dispatch_key('snn_fast::' + op, sys.argv[1]), op + ' has no kernel'\n"
    "print('prebuilt snn_fast._C loads:', snn_fast.__file__, 'torch', torch.__version__)\n"
)


def source_hash(root: str = ROOT) -> str:
    return subprocess.check_output(["bash", os.path.join(root, "scripts", "gpu_ext_hash.sh")], text=True).strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=ROOT, help="the tree to install it into (tests use a copy)")
    ap.add_argument("--dir", default=None, help="default: <root>/.gpu_ext")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--key", default="CUDA", help="dispatch key whose kernels must be there (tests: CPU)")
    a = ap.parse_args(argv)
    root = a.root
    a.dir = a.dir or os.path.join(root, ".gpu_ext")
    # _C.so.gz: the library compressed (scripts/gpu_build_ext.sh writes it: the CUDA build is larger than
    # what the device tool carries, 64 MiB); _C.so as it is (an older .gpu_ext, or one unpacked by hand)
    stamp = os.path.join(a.dir, "SOURCES")
    lib = next((p for p in (os.path.join(a.dir, n) for n in ("_C.so.gz", "_C.so")) if os.path.isfile(p)), None)
    if lib is None or not os.path.isfile(stamp):
        print(f"no prebuilt library in {a.dir} (scripts/gpu_build_ext.sh makes it): building")
        return 1
    want, have = source_hash(root), open(stamp).read().strip()
    if want != have:
        print(f"the prebuilt library is from other sources ({have}, the tree is {want}): building")
        return 1
    dest = os.path.join(root, "snn_fast", "_C.so")
    for old in (p for p in os.listdir(os.path.dirname(dest)) if p.startswith("_C") and p.endswith(".so")):
        os.remove(os.path.join(os.path.dirname(dest), old))
    if lib.endswith(".gz"):
        with gzip.open(lib, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    else:
        shutil.copyfile(lib, dest)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([a.python, "-c", PROBE, a.key], cwd=root, env=env, capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    if r.returncode != 0:
        os.remove(dest)
        print("the prebuilt library does not load here: building")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
