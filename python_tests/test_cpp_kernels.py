"""The C++ tests (csrc/tests), built with CMake and run by ctest as part of the suite: the unit
tests of csrc/core and csrc/cpu, and the CUDA kernels of csrc/cuda run from their unchanged
source on the CPU by the emulation layer of csrc/tests/emulation.

The emulation proves the kernels' arithmetic, indexing and barrier placement; it does not
prove memory coalescing, occupancy, speed, races outside barriers or the device's numerics
(see csrc/tests/emulation/cuda_runtime.h). The last test shows that the emulated tests catch
typical kernel bugs: it plants each one in a copy of the sources and expects failures."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cmake"
EMULATED_TESTS = "sinkhorn_emulated_cuda_tests"


def _run(*cmd, cwd=ROOT, check=True):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if check:
        command = " ".join(map(str, cmd))
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _tools():
    cmake, ctest = shutil.which("cmake"), shutil.which("ctest")
    assert cmake and ctest, "cmake is needed to build the C++ tests (scripts/setup.sh --test)"
    return cmake, ctest


def _configure(cmake, source, build):
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(cmake, "-S", str(source), "-B", str(build), *generator,
         f"-DPython3_EXECUTABLE={sys.executable}")


def test_cpp_kernel_tests_pass_under_ctest():
    cmake, ctest = _tools()
    _configure(cmake, ROOT, BUILD)
    _run(cmake, "--build", str(BUILD), "--parallel", str(os.cpu_count() or 1))
    out = _run(ctest, "--test-dir", str(BUILD), "--output-on-failure").stdout
    assert "100% tests passed" in out, out


# Typical kernel bugs, each planted by replacing one exact piece of csrc/cuda.
PLANTED_BUGS = {
    "off_by_one_in_the_tail_of_a_tile": (
        "csrc/cuda/common.cuh",
        "const int64_t count = s.cols - c0 < kThreads ? s.cols - c0 : kThreads;",
        "const int64_t count = s.cols - c0 < kThreads ? s.cols - c0 - 1 : kThreads;",
    ),
    "missing_barrier_between_staging_and_reading_a_tile": (
        "csrc/cuda/common.cuh",
        "if (threadIdx.x < count) h_tile[threadIdx.x] = s.h[b * s.cols + c0 + threadIdx.x];\n"
        "      __syncthreads();",
        "if (threadIdx.x < count) h_tile[threadIdx.x] = s.h[b * s.cols + c0 + threadIdx.x];",
    ),
    "missing_barrier_in_the_shared_memory_transposition": (
        "csrc/cuda/sinkhorn_backward.cu",
        "if (j < n && i < m) tile[dy * kPitch + tx] = Gt[(b * n + j) * m + i];\n      }\n"
        "      __syncthreads();",
        "if (j < n && i < m) tile[dy * kPitch + tx] = Gt[(b * n + j) * m + i];\n      }",
    ),
    "missing_barrier_between_the_half_steps_of_the_resident_loop": (
        "csrc/cuda/sinkhorn_forward.cu",
        "f[i] = with_log_weight(p.x_weights[b * m + i], u, eps);\n      }\n      __syncthreads();",
        "f[i] = with_log_weight(p.x_weights[b * m + i], u, eps);\n      }",
    ),
    "block_reduction_that_stops_one_step_early": (
        "csrc/cuda/common.cuh",
        "for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {",
        "for (unsigned half = blockDim.x / 2; half > 1; half /= 2) {",
    ),
    "missing_barrier_between_staging_a_chunk_of_coordinates_and_reading_it": (
        "csrc/cuda/sinkhorn_online.cu",
        "if (d > kChunk) load_chunk(a, d, k0, own);\n    __syncthreads();",
        "if (d > kChunk) load_chunk(a, d, k0, own);",
    ),
    "chunk_of_coordinates_that_drops_the_last_one": (
        "csrc/cuda/sinkhorn_online.cu",
        "tile[e] = c < count && k < d ? o[(c0 + c) * d + k] : T(0);",
        "tile[e] = c < count && k < d - 1 ? o[(c0 + c) * d + k] : T(0);",
    ),
    "column_sums_that_miss_the_terminal_term": (
        "csrc/cuda/sinkhorn_online.cu",
        "adjoint_term<T, std::is_same_v<ColumnTerm, TerminalTerm>>",
        "adjoint_term<T, false>",
    ),
}


@pytest.fixture(scope="module")
def emulated_build(tmp_path_factory):
    """A private copy of the sources with the emulated kernel tests built once; each planted
    bug then recompiles only the file it changes."""
    cmake, _ = _tools()
    source = tmp_path_factory.mktemp("planted")
    for item in ("CMakeLists.txt", "csrc"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, source / item)
    build = source / "build"
    _configure(cmake, source, build)
    _run(cmake, "--build", str(build), "--target", EMULATED_TESTS,
         "--parallel", str(os.cpu_count() or 1))
    return cmake, source, build


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_emulated_cuda_kernel_tests_catch_planted_bug(emulated_build, bug):
    cmake, source, build = emulated_build
    relative, correct, planted = PLANTED_BUGS[bug]
    path = source / relative
    original = path.read_text()
    assert original.count(correct) == 1, f"the code this bug is planted in changed: {correct!r}"
    try:
        path.write_text(original.replace(correct, planted))
        _run(cmake, "--build", str(build), "--target", EMULATED_TESTS)
        result = _run(str(build / EMULATED_TESTS), "cuda_forward.*", "cuda_backward.*",
                      "cuda_online.*", check=False)
    finally:
        path.write_text(original)
    failed = [line.split()[3] for line in result.stdout.splitlines()
              if line.startswith("[ FAIL ]")]
    assert result.returncode != 0 and failed, f"planted bug {bug} went unnoticed:\n{result.stdout}"
    print(f"{bug}: caught by {', '.join(failed)}")
