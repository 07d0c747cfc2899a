"""The carried GPU build (scripts/gpu_build_ext.sh → .gpu_ext/, scripts/gpu/use_prebuilt_ext.py): the
check uses it only when it was built from the same sources and loads with the kernels asked for.
Run on a copy of the tree, with this machine's CPU build standing in for the GPU one (``--key CPU``)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

import snn_fast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu", "use_prebuilt_ext.py")
BUILT = glob.glob(os.path.join(os.path.dirname(snn_fast.__file__), "_C*.so"))

pytestmark = pytest.mark.skipif(not (snn_fast.HAS_C and BUILT), reason="needs the built C++ extension")


@pytest.fixture
def tree(tmp_path):
    """A copy of what the hash and the probe read: setup.py, csrc/, scripts/, the package without _C."""
    root = tmp_path / "tree"
    shutil.copytree(os.path.join(ROOT, "csrc"), root / "csrc")
    shutil.copytree(os.path.join(ROOT, "scripts"), root / "scripts")
    shutil.copytree(os.path.dirname(snn_fast.__file__), root / "snn_fast",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    shutil.copy(os.path.join(ROOT, "setup.py"), root / "setup.py")
    (root / ".gpu_ext").mkdir()
    shutil.copy(BUILT[0], root / ".gpu_ext" / "_C.so")
    return root


def _hash(root):
    return subprocess.check_output(["bash", str(root / "scripts" / "gpu_ext_hash.sh")], text=True).strip()


def _use(root, key):
    return subprocess.run([sys.executable, SCRIPT, "--root", str(root), "--key", key], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=""))


def test_hash_follows_the_sources(tree):
    h = _hash(tree)
    assert len(h) == 16 and h == _hash(tree)
    with open(tree / "csrc" / "ops.cpp", "a") as f:
        f.write("// changed\n")
    assert _hash(tree) != h


def test_used_when_it_matches_and_loads(tree):
    (tree / ".gpu_ext" / "SOURCES").write_text(_hash(tree) + "\n")
    r = _use(tree, "CPU")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loads" in r.stdout and os.path.isfile(tree / "snn_fast" / "_C.so")


def test_gzipped_library_is_unpacked_and_used(tree):
    """What scripts/gpu_build_ext.sh writes: _C.so.gz (the CUDA build is larger than the 64 MiB the device
    tool carries), unpacked into the package."""
    import gzip

    lib = tree / ".gpu_ext" / "_C.so"
    with open(lib, "rb") as src, gzip.open(str(lib) + ".gz", "wb", compresslevel=1) as out:
        shutil.copyfileobj(src, out)
    lib.unlink()
    (tree / ".gpu_ext" / "SOURCES").write_text(_hash(tree) + "\n")
    r = _use(tree, "CPU")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loads" in r.stdout
    with open(BUILT[0], "rb") as a, open(tree / "snn_fast" / "_C.so", "rb") as b:
        assert a.read() == b.read()


def test_rebuilt_when_sources_differ(tree):
    (tree / ".gpu_ext" / "SOURCES").write_text("0" * 16 + "\n")
    r = _use(tree, "CPU")
    assert r.returncode == 1 and "other sources" in r.stdout
    assert not os.path.exists(tree / "snn_fast" / "_C.so")


def test_rebuilt_when_kernels_are_missing(tree):
    """Asked for kernels the library lacks (no build has MPS kernels; the CPU-only build standing in
    for a GPU build without them), the script removes it and says so."""
    (tree / ".gpu_ext" / "SOURCES").write_text(_hash(tree) + "\n")
    r = _use(tree, "MPS")
    assert r.returncode == 1 and "does not load" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(tree / "snn_fast" / "_C.so")


def test_library_needs_no_python_binding_layer():
    """Built with py_limited_api (setup.py): it does not link libtorch_python and takes from CPython only
    the stable ABI's module creation, so the same file loads under another Python (the GPU image's)."""
    dyn = subprocess.run(["readelf", "-d", BUILT[0]], capture_output=True, text=True).stdout
    assert "libtorch_python" not in dyn, dyn
    undefined = subprocess.run(["nm", "-D", "--undefined-only", BUILT[0]], capture_output=True, text=True).stdout
    py = sorted({line.split()[-1] for line in undefined.splitlines() if line.split()[-1].startswith(("Py", "_Py"))})
    assert py == ["PyModule_Create2"], py
