"""Builds snn_fast._C from csrc/: the CPU kernels always; the CUDA kernels (csrc/cuda/*.cu) only when
torch has CUDA and nvcc is found, unless SNN_FAST_NO_CUDA=1. SNN_FAST_NO_EXT=1 skips the extension
altogether (the reference and Triton backends still work)."""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def extensions():
    if _flag("SNN_FAST_NO_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

    sources = [os.path.relpath(p, ROOT) for p in ["csrc/ops.cpp"] + sorted(glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp")))]
    include_dirs = [os.path.join(ROOT, "csrc/include")]
    # -fopenmp: at::parallel_for runs its OpenMP region inline in our code. -fno-math-errno and
    # -fno-trapping-math let the vectoriser if-convert the inner loops (neither changes a result);
    # -ffp-contract=off keeps float32 rounding identical to the float32 reference (no fused
    # multiply-adds), so spikes never flip between the two.
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-ffp-contract=off"]
    with_cuda = (
        not _flag("SNN_FAST_NO_CUDA")
        and torch.version.cuda is not None
        and (CUDA_HOME is not None or shutil.which("nvcc") is not None)
    )
    cuda_sources = sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu"))) + sorted(
        glob.glob(os.path.join(ROOT, "csrc/cuda/*.cpp"))
    )
    if with_cuda and cuda_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = CUDAExtension(
            "snn_fast._C",
            sources + [os.path.relpath(p, ROOT) for p in cuda_sources],
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DSNN_FAST_WITH_CUDA"], "nvcc": ["-O3", "--use_fast_math", "-DSNN_FAST_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "snn_fast._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extensions()

setup(
    packages=find_packages(include=["snn_fast", "snn_fast.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
