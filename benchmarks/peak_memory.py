"""Peak extra memory of one forward+backward of the loss, each configuration and implementation
in a fresh process, since a process's resident-set peak only ever grows.

On the CPU: the resident-set peak (getrusage ru_maxrss) after the call minus that before it,
the "before" taken after the imports and the data. On cuda: torch's peak of allocated GPU memory
during the call minus what was allocated before it.

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
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        loss_fn(x, problem.y).backward()
        extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * 1024
    print(extra / 2**20)


if __name__ == "__main__":
    main()
