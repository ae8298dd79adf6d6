"""Peak extra memory of one forward+backward of the loss, each configuration and implementation
in a fresh process.

On the CPU: the resident-set peak during the call minus the resident set before it, the
"before" taken after the imports and the data. On Linux the peak (VmHWM) is reset first through
/proc/self/clear_refs: a process's peak otherwise starts from its parent's at the fork, and the
report that launches these probes has been through far larger calls. Elsewhere it falls back to
getrusage's ru_maxrss. On cuda: torch's peak of allocated GPU memory during the call minus what
was allocated before it.

    python -m benchmarks.peak_memory IMPLEMENTATION M D L EPS DTYPE DEVICE   # prints MB
"""

from __future__ import annotations

import pathlib
import resource
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def peak_extra_mb(name: str, config, dtype: str, device: str, timeout: float = 3600) -> float:
    """Runs this module in a subprocess for one implementation and configuration; raises
    RuntimeError with the child's error if it fails."""
    args = [name, config.m, config.d, config.iters, config.eps, dtype, device]
    result = subprocess.run([sys.executable, "-m", "benchmarks.peak_memory", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {name} {config} failed: {result.stderr.strip()[-2000:]}")
    return float(result.stdout.split()[-1])


def main():
    import torch

    from benchmarks.suite import Config, implementation, make_problem

    name, m, d, iters, eps, dtype, device = sys.argv[1:]
    problem = make_problem(Config(int(m), int(d), int(iters), float(eps)),
                           getattr(torch, dtype), device)
    loss_fn, _ = implementation(name).prepare(problem)
    x = problem.x.detach().requires_grad_()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        loss_fn(x, problem.y).backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - start
    else:
        start = reset_peak_kib()
        loss_fn(x, problem.y).backward()
        extra = (peak_kib() - start) * 1024
    print(extra / 2**20)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def reset_peak_kib() -> int:
    """Resets the resident-set peak where Linux allows it; returns the resident set (KiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def peak_kib() -> int:
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main()
