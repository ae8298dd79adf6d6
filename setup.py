"""Builds sinkhorn_ext._C against the installed torch.

A CUDA build is made when torch has CUDA and a CUDA toolkit is found; FORCE_CUDA=1 forces
it (TORCH_CUDA_ARCH_LIST is respected) and FORCE_CPU=1 forbids it. Build with
``pip install --no-build-isolation .`` so that the extension matches the torch it runs with.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _use_cuda():
    if _flag("FORCE_CPU"):
        return False
    if _flag("FORCE_CUDA"):
        if CUDA_HOME is None:  # torch sets it only when it was itself built with CUDA
            raise SystemExit(
                "FORCE_CUDA=1 needs a CUDA build of torch (this one is "
                f"{torch.__version__}) and a CUDA toolkit (set CUDA_HOME)"
            )
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extensions():
    use_cuda = _use_cuda()
    sources = _sources("csrc/cpu/*.cpp") + _sources("csrc/ops/*.cpp")
    # -fno-trapping-math lets the compiler if-convert (and so vectorise) the selects in fast_exp;
    # -fno-wrapv undoes Python's -fwrapv, under which index arithmetic in the row kernels
    # may wrap and their loops turn into gathers.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-fno-wrapv", "-Wall",
           "-Wextra"]
    extra = {"cxx": cxx}
    if use_cuda:
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/ops/cuda/*.cpp")
        extra["nvcc"] = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]
        extension = CUDAExtension
    else:
        extension = CppExtension
    return [
        extension(
            name="sinkhorn_ext._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
            define_macros=[("Py_LIMITED_API", "0x03090000")],
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
