"""Builds snn_fast._C from csrc/: the CPU kernels always; the CUDA kernels (csrc/cuda/*.cu) only when
torch has CUDA and nvcc is found, unless SNN_FAST_NO_CUDA=1. SNN_FAST_NO_EXT=1 skips the extension
altogether (the reference and Triton backends still work). SNN_FAST_CPU_CLONES=0 builds the CPU
kernels' hot loops once, for the baseline x86-64, instead of three clones picked at load time
(x86-64-v4, x86-64-v3, baseline): `make compat` does, since it checks torch compatibility, not speed,
and the clones are ~40 % of the CPU kernels' compile time."""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name, default="0"):
    return os.environ.get(name, default).lower() in ("1", "true", "yes")


def _cuda_home_guess():
    """A CUDA toolkit root holding include/cuda_runtime.h, or None.

    torch derives CUDA_HOME from `which nvcc` as its grandparent directory; when nvcc on PATH is a
    wrapper script (e.g. /usr/local/bin/nvcc exec-ing the real one) that is /usr/local, which has no
    CUDA headers. Try the real binary's root and the usual /usr/local/cuda before torch looks.
    """
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    cands.append("/usr/local/cuda")
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


def extensions():
    if _flag("SNN_FAST_NO_EXT"):
        return [], {}
    if not _flag("SNN_FAST_NO_CUDA") and _cuda_home_guess():
        os.environ.setdefault("CUDA_HOME", _cuda_home_guess())
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

    cpu_sources = sorted(glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp")))
    autograd_sources = sorted(glob.glob(os.path.join(ROOT, "csrc/autograd/*.cpp")))
    sources = [os.path.relpath(p, ROOT) for p in ["csrc/ops.cpp"] + cpu_sources + autograd_sources]
    include_dirs = [os.path.join(ROOT, "csrc/include")]
    # -fopenmp: at::parallel_for runs its OpenMP region inline in our code. -fno-math-errno and
    # -fno-trapping-math let the vectoriser if-convert the inner loops (neither changes a result);
    # -ffp-contract=off keeps float32 rounding identical to the float32 reference (no fused
    # multiply-adds), so spikes never flip between the two. -g0 overrides Python's own -g: with debug
    # info the templated kernels made a 410 MB library and 1.5 GB of objects per build, and a CI run
    # (two builds, two CUDA torches) ran out of disk.
    cxx = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-ffp-contract=off"]
    if not _flag("SNN_FAST_CPU_CLONES", default="1"):
        cxx.append("-DSNN_CPU_CLONES=")  # lif_cpu_kernels_impl.h: empty, no target_clones
    with_cuda = (
        not _flag("SNN_FAST_NO_CUDA")
        and torch.version.cuda is not None
        and (CUDA_HOME is not None or shutil.which("nvcc") is not None)
    )
    cuda_sources = sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu"))) + sorted(
        glob.glob(os.path.join(ROOT, "csrc/cuda/*.cpp"))
    )
    if with_cuda and cuda_sources:
        # A100 (sm_80) and H100 (sm_90) SASS by default; TORCH_CUDA_ARCH_LIST overrides.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # No --use_fast_math: its approximate exp/log/division and flush-to-zero would move the
        # analog value of the noisy spike (which feeds the reset) and the surrogate gradients away
        # from the reference; the kernels are memory-bound, so precise math costs no time.
        # -lineinfo: compute-sanitizer and profilers map back to source lines, no runtime cost.
        nvcc = ["-O3", "-lineinfo", "-DSNN_FAST_WITH_CUDA"]
        ext = CUDAExtension(
            "snn_fast._C",
            sources + [os.path.relpath(p, ROOT) for p in cuda_sources],
            py_limited_api=True,
            include_dirs=include_dirs + [os.path.join(ROOT, "csrc/cuda")],
            extra_compile_args={"cxx": cxx + ["-DSNN_FAST_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "snn_fast._C", sources, include_dirs=include_dirs, py_limited_api=True,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    # py_limited_api: the library holds TORCH_LIBRARY registrations and an empty module, no pybind, so it
    # uses only CPython's stable ABI (Py_LIMITED_API) and does not link libtorch_python: one build loads
    # under any Python 3.9+ with the torch it was built against (scripts/gpu_build_ext.sh builds the GPU
    # image's on this machine). No ABI suffix: the file is snn_fast/_C.so for every Python.
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extensions()

setup(
    packages=find_packages(include=["snn_fast", "snn_fast.*"]),
    # The measured backend table read by snn_fast.ops.lif.autotable.
    package_data={"snn_fast.ops.lif": ["autotable.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
