"""The C++ unit tests of csrc/core and csrc/cpu (csrc/tests), built with CMake and run by
ctest, as part of the suite."""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "cmake"


def _run(*cmd):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_cpp_kernel_unit_tests_pass_under_ctest():
    cmake, ctest = shutil.which("cmake"), shutil.which("ctest")
    assert cmake and ctest, "cmake is needed to build the C++ tests (scripts/setup.sh --test)"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(cmake, "-S", str(ROOT), "-B", str(BUILD), *generator,
         f"-DPython3_EXECUTABLE={sys.executable}")
    _run(cmake, "--build", str(BUILD), "--parallel", str(os.cpu_count() or 1))
    out = _run(ctest, "--test-dir", str(BUILD), "--output-on-failure")
    assert "100% tests passed" in out, out
