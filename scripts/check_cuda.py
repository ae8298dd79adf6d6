"""Compile-checks the CUDA sources on a machine without a GPU (run by .ci/run).

* Every csrc/cuda/*.cu file is compiled by nvcc for sm_80 and sm_90 with warnings as errors
  (ours and the host compiler's), and ptxas reports each kernel's registers and spills. A
  kernel that spills to local memory fails the check unless the lines just above its
  ``__global__`` carry a comment ``// spills: <why it must>``.
* The torch binding csrc/ops/cuda/*.cpp is syntax-checked by the host compiler against the
  installed torch's headers. A CPU-only torch lacks one generated header of c10/cuda
  (cuda_cmake_macros.h); a stand-in that declares a shared-library build is supplied.

    python scripts/check_cuda.py [--arch 80 90] [--nvcc PATH] [--nvcc-flag FLAG ...]
"""

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def nvcc_command(nvcc, source, archs, extra, output):
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", *gencode,
            "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
            "-Xptxas", "-v", *extra, "-I", CSRC, "-c", source, "-o", output]


def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return dict(zip(names, out))


KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(")


def kernel_name(demangled):
    """`void sinkhorn::cuda::(anonymous namespace)::adjoint_kernel<float, true>(...)` ->
    `adjoint_kernel`."""
    match = re.search(r"(\w+)(?:<[^()]*>)?\(", demangled)
    return match.group(1) if match else demangled


def spill_waivers(source):
    """The kernels with a `// spills: <why>` line in the comment block just above them
    (above their `template <...>` line, if any)."""
    text = open(source).read()
    waived = set()
    for match in KERNEL.finditer(text):
        above = text[:text.rfind("\n", 0, match.start()) + 1].splitlines()  # whole lines
        while above and above[-1].strip().startswith("template"):
            above.pop()
        while above and above[-1].strip().startswith("//"):
            if re.match(r"\s*//\s*spills:", above[-1]):
                waived.add(match.group(1))
            above.pop()
    return waived


def cuda_include_dir(nvcc):
    """The toolkit's include directory, from where nvcc says it lives (`nvcc --dryrun`)."""
    run = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    top = re.search(r"^#\$ TOP=(.*)$", run.stdout + run.stderr, re.MULTILINE)
    if top is None:
        sys.exit("check_cuda: could not locate the CUDA toolkit from `nvcc --dryrun`")
    return os.path.normpath(os.path.join(top.group(1).strip(), "include"))


def parse_ptxas(log):
    """[(mangled, arch, registers, spill_stores, spill_loads)] in the order ptxas reports."""
    rows, current = [], None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = [m.group(1), m.group(2), None, 0, 0]
            rows.append(current)
        elif current is not None and (m := SPILLS.search(line)):
            current[3], current[4] = int(m.group(1)), int(m.group(2))
        elif current is not None and (m := REGISTERS.search(line)):
            current[2] = int(m.group(1))
    return rows


def check_cu(nvcc, source, archs, extra, workdir):
    output = os.path.join(workdir, os.path.basename(source) + ".o")
    run = subprocess.run(nvcc_command(nvcc, source, archs, extra, output), capture_output=True,
                         text=True)
    return source, run.returncode, run.stdout + run.stderr


def check_binding(source, cuda_include, workdir):
    import torch.utils.cpp_extension as ext

    stub = os.path.join(workdir, "stub", "c10", "cuda", "impl")
    os.makedirs(stub, exist_ok=True)
    header = os.path.join(stub, "cuda_cmake_macros.h")
    if not os.path.exists(header):
        with open(header, "w") as f:
            f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = ["-I", CSRC]
    for d in [*ext.include_paths(), os.path.join(workdir, "stub"), cuda_include]:
        includes += ["-isystem", d]
    cxx = os.environ.get("CXX", "c++")
    run = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                          *includes, source], capture_output=True, text=True)
    return source, run.returncode, run.stdout + run.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["80", "90"])
    parser.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    parser.add_argument("--nvcc-flag", action="append", default=[],
                        help="an extra nvcc flag (repeatable), e.g. --nvcc-flag=-maxrregcount=24")
    args = parser.parse_args()
    nvcc = shutil.which(args.nvcc)
    if nvcc is None:
        sys.exit(f"check_cuda: nvcc not found ({args.nvcc!r}); install the CUDA toolkit or "
                 "pass --nvcc")
    cu_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    bindings = sorted(glob.glob(os.path.join(CSRC, "ops", "cuda", "*.cpp")))
    failed = False
    with tempfile.TemporaryDirectory() as workdir, \
            concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        jobs = [pool.submit(check_cu, nvcc, s, args.arch, args.nvcc_flag, workdir)
                for s in cu_sources]
        cuda_include = cuda_include_dir(nvcc)
        jobs += [pool.submit(check_binding, s, cuda_include, workdir) for s in bindings]
        results = [j.result() for j in jobs]

    for source, code, log in results:
        rel = os.path.relpath(source, ROOT)
        if code != 0:
            failed = True
            print(f"FAIL {rel}: compilation failed\n{log}")
            continue
        if not source.endswith(".cu"):
            print(f"ok   {rel}: host compiler, -Wall -Wextra -Werror")
            continue
        rows = parse_ptxas(log)
        names = demangle(sorted({r[0] for r in rows}))
        waived = spill_waivers(source)
        print(f"ok   {rel}: nvcc {' '.join('sm_' + a for a in args.arch)}, -Werror")
        print(f"     {'kernel':<70} {'arch':<6} {'regs':>4} {'spill st/ld':>12}")
        for mangled, arch, regs, stores, loads in rows:
            pretty = names[mangled].replace("sinkhorn::cuda::", "").replace(
                "(anonymous namespace)::", "")
            pretty = pretty.split("(")[0]
            spilled = stores or loads
            verdict = ""
            if spilled:
                if kernel_name(names[mangled]) in waived:
                    verdict = "  spills (waived by a // spills: comment)"
                else:
                    verdict = "  SPILLS: add a `// spills: <why>` comment at the kernel or fix it"
                    failed = True
            print(f"     {pretty:<70} {arch:<6} {regs if regs is not None else '?':>4} "
                  f"{f'{stores}/{loads}':>12}{verdict}")
    if failed:
        sys.exit("check_cuda: FAILED")
    print("check_cuda: all CUDA sources compile without warnings, and no kernel spills")


if __name__ == "__main__":
    main()
