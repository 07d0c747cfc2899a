"""References in comments and docs lead somewhere: every repository file path they name exists, and
every "docs/spec.md §N" names a section of docs/spec.md.

Scanned: the tracked files under snn_fast/, csrc/, tests/, benchmarks/ (not its results), scripts/,
examples/, docs/, every *.md, the Makefile, setup.py, pyproject.toml and .ci/run — their whole text,
so a path in a docstring, a comment or a string counts alike.

What counts as a path: ``dir/name.ext`` (one or more directories) or a bare ``name.ext`` with a source
or doc extension. A path resolves if it is a tracked file or directory relative to the repository root,
to the citing file's directory, or as a trailing part of a tracked path (``ops/lif/triton.py``,
``snn_fast/lif_step.h`` as an ``#include`` names it). Not paths: URLs, absolute and home paths,
patterns (``*``, ``<...>``, ``{...}``, ``$VAR``), paths inside other projects (their first directory
is one of ``EXTERNAL``), build outputs (``GENERATED_PREFIXES``) and the names listed, with a reason,
in ``ELSEWHERE``.
"""
from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache
from typing import Dict, List, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "docs/spec.md"

SCANNED_DIRS = ("snn_fast/", "csrc/", "tests/", "benchmarks/", "scripts/", "examples/", "docs/")
SCANNED_FILES = ("Makefile", "setup.py", "pyproject.toml", ".ci/run")
SKIPPED_DIRS = ("benchmarks/results/",)
TEXT_EXT = (".py", ".h", ".cuh", ".cu", ".cpp", ".md", ".sh", ".toml", ".txt", ".cfg", ".yaml", ".yml", "")

# Extensions a bare file name must have to be checked (other bare names, e.g. an output "x.png" a
# script writes into the current directory, are not repository paths).
BARE_EXT = ("py", "h", "cuh", "cu", "cpp", "md", "sh")
PATH_EXT = BARE_EXT + ("json", "toml", "yaml", "yml", "txt", "csv", "png", "so", "log", "tar.gz", "cfg")

# First directories of paths that live in other projects (installed packages, system headers, the
# repositories the code cites for a fact).
EXTERNAL = {
    "torch", "triton", "spikingjelly", "snntorch", "norse", "nir", "nirtorch", "sinabs", "numpy", "c10",
    "ATen", "cuda", "cub", "thrust", "pybind11", "site-packages", "dist-packages", "activation_based",
    "python", "fla", "liger_kernel", "src", "include", "lib", "lib64", "bin", "usr", "tmp", "proc", "sys",
    "flash_attn", "extension_cpp", "extension-cpp", "Liger-Kernel", "flash-linear-attention", "braincog",
    "BrainCog", "sj", "_inductor", "_higher_order_ops", "library", "csrc_torch", "setuptools", "pip",
}
# Written at run time (build outputs, results, temporary copies), so absent from a clean checkout.
GENERATED_PREFIXES = (".venv", ".compat", "build/", ".venv-compat", "benchmarks/results/", "$OUT", "OUT/", ".gpu_ext/",
                      ".gpu_ext_build/", "snn_fast/_C")
# Names that are not this repository's files, each with the reason; "*" = in any file.
ELSEWHERE = {
    ("*", "summary.md"): "written by scripts/gpu_check.sh into the device's $OUT",
    ("*", "cuda_runtime.h"): "CUDA's header",
    ("*", "callgrind.h"): "valgrind's header (benchmarks/bytes_bn_lif.py's client requests)",
    ("README.md", "train.py"): "a user's training script in an example command",
    ("examples/asgl_width_sweep.py", "experiment/development/main.py"): "the ASGL document's repository",
    ("examples/asgl_width_sweep.py", "main.py"): "the ASGL document's repository",
    ("examples/tempotron_digits.py", "event_driven/examples/tempotron_mnist.py"): "SpikingJelly's repository",
    ("tests/test_cpp_special_values.py", "shim.cpp"): "written into the test's tmp_path",
    ("tests/test_cuda_compile.py", "probe.cu"): "written into the test's tmp_path",
    ("snn_fast/ops/lif/native_surrogate.py", "src.cpp"): "the generated unit, written into a build directory",
    ("tests/test_native_surrogate.py", "unit.cpp"): "written into the test's tmp_path",
}

_PATH_RE = re.compile(
    r"(?<![\w./\-$~*<{@:])"  # not inside a longer token, a URL, a pattern or a home/variable path
    r"((?:[A-Za-z0-9_.\-]+/)*[A-Za-z0-9_\-][A-Za-z0-9_.\-]*\.(?:" + "|".join(re.escape(e) for e in PATH_EXT) + r"))"
    r"(?![\w\-*/<{(])"
)
_URL_RE = re.compile(r"[a-z][a-z0-9+.\-]*://\S+")
_SPEC_REF_RE = re.compile(r"docs/spec\.md((?:\s*(?:,|–|-|and|or)?\s*§\s?\d+(?:\.\d+)*)+)")
_SPEC_LOCAL_REF_RE = re.compile(r"§\s?(\d+(?:\.\d+)*)")
_STALE_RE = re.compile(r"\bSPEC(?:\.md)? ?§")


@lru_cache(maxsize=1)
def tracked() -> Tuple[str, ...]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return tuple(p for p in out.splitlines() if os.path.exists(os.path.join(ROOT, p)))


@lru_cache(maxsize=1)
def known_paths() -> Tuple[Set[str], Set[str]]:
    """(every tracked file and every directory above one, their basenames)."""
    paths: Set[str] = set()
    for p in tracked():
        parts = p.split("/")
        for i in range(1, len(parts) + 1):
            paths.add("/".join(parts[:i]))
    return paths, {p.rsplit("/", 1)[-1] for p in paths}


def scanned() -> List[str]:
    out = []
    for p in tracked():
        if p.startswith(SKIPPED_DIRS) or p == "tests/test_docs.py":  # this file's examples are deliberate
            continue
        top_md = p.endswith(".md")
        if not (p.startswith(SCANNED_DIRS) or p in SCANNED_FILES or top_md):
            continue
        if os.path.splitext(p)[1] not in TEXT_EXT and p not in SCANNED_FILES:
            continue
        out.append(p)
    return out


def _resolves(path: str, citing: str) -> bool:
    paths, basenames = known_paths()
    path = path.strip("./") if path.startswith("./") else path
    if "/" not in path:
        return path in basenames
    if path in paths:
        return True
    here = os.path.normpath(os.path.join(os.path.dirname(citing), path))
    if here in paths:
        return True
    return any(p.endswith("/" + path) for p in paths)


def _ignored(path: str, citing: str) -> bool:
    if ("*", path) in ELSEWHERE or (citing, path) in ELSEWHERE:
        return True
    stem, ext = path.rsplit(".", 1)
    if "/" not in path and ext == "h" and stem.isidentifier() and "_" not in stem and len(stem) <= 4:
        return True  # ``self.h``, ``m.h``: an attribute, not a header
    first = path.split("/", 1)[0]
    if "/" in path and first in EXTERNAL:
        return True
    return path.startswith(GENERATED_PREFIXES)


def missing_paths(rel: str, text: str) -> List[Tuple[int, str]]:
    """(line, path) for every path named in ``text`` (the file ``rel``) that does not resolve."""
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = _URL_RE.sub(" ", line)
        for m in _PATH_RE.finditer(line):
            path = m.group(1)
            if "/" not in path and path.rsplit(".", 1)[-1] not in BARE_EXT:
                continue
            if path.startswith(".") and "/" not in path:  # ".py", ".so": an extension, not a file
                continue
            if _ignored(path, rel) or _resolves(path, rel):
                continue
            found.append((lineno, path))
    return found


@lru_cache(maxsize=1)
def spec_sections() -> Set[str]:
    """Section numbers of docs/spec.md: "2", "2.5", … from its '## N.' / '### N.M' headings."""
    with open(os.path.join(ROOT, SPEC), encoding="utf-8") as f:
        heads = re.findall(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", f.read(), flags=re.M)
    return set(heads)


def bad_spec_refs(rel: str, text: str) -> List[Tuple[int, str]]:
    """(line, reference) for a "docs/spec.md §N" (or, inside docs/spec.md, a bare "§N") whose section
    does not exist, and for every citation of a spec outside the repository ("SPEC §N")."""
    sections = spec_sections()
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in _STALE_RE.finditer(line):
            found.append((lineno, m.group(0) + " (no such file in the repository; cite docs/spec.md §N)"))
        refs = [m.group(1) for m in _SPEC_REF_RE.finditer(line)]
        nums = [n for r in refs for n in _SPEC_LOCAL_REF_RE.findall(r)]
        if rel == SPEC:
            nums = _SPEC_LOCAL_REF_RE.findall(line)
        found += [(lineno, f"{SPEC} §{n}") for n in nums if n not in sections]
    return found


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace") as f:
        return f.read()


def findings() -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for rel in scanned():
        text = _read(rel)
        bad = [f"{rel}:{n}: names {p}, which is not in the repository" for n, p in missing_paths(rel, text)]
        bad += [f"{rel}:{n}: {r}" for n, r in bad_spec_refs(rel, text)]
        if bad:
            out[rel] = bad
    return out


def test_spec_has_numbered_sections():
    assert {"1", "2", "2.5", "3", "4", "5.4", "6.2", "8", "9", "10"} <= spec_sections()


def test_every_named_file_exists_and_every_spec_section_too():
    bad = findings()
    assert not bad, "references that go nowhere:\n" + "\n".join(line for lines in bad.values() for line in lines)


# --- the checks can fail ----------------------------------------------------------------------------

def test_a_missing_path_is_found():
    text = (
        "# see tests/test_lif_memory.py and test_lif_cpu.py, BENCHMARKS.md\n"
        "# fine: tests/test_lif.py, ops/lif/triton.py, snn_fast/lif_step.h, README.md\n"
        "# not paths: https://example.org/a/b.py, benchmarks/results/<device>-<date>.csv, torch/_ops.py\n"
    )
    got = missing_paths("tests/x.py", text)
    assert got == [(1, "tests/test_lif_memory.py"), (1, "test_lif_cpu.py"), (1, "BENCHMARKS.md")]


def test_a_missing_spec_section_is_found():
    text = "# docs/spec.md §2.5 and §3; docs/spec.md §42\n// SPEC §5: the Tempotron\n"
    got = bad_spec_refs("csrc/x.h", text)
    assert got == [(1, "docs/spec.md §42"), (2, "SPEC § (no such file in the repository; cite docs/spec.md §N)")]
