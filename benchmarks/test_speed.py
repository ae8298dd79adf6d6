"""pytest-benchmark microbenchmarks: forward, and forward+backward, of the debiased
sinkhorn_loss for each fused backend, the two baselines (sinkhorn_ext.reference and the
scaling-domain Algorithm 2 of benchmarks/scaling_domain.py) and, when installed, the peers POT
and GeomLoss, over the grid chosen in benchmarks/conftest.py. Each benchmark group is one
mode and configuration, so pytest-benchmark's table compares the implementations within it.
"""

import pytest
import torch

from benchmarks.suite import MODES, step


@pytest.mark.parametrize("mode", MODES)
def test_sinkhorn_loss(benchmark, config, implementation, mode, problem, device, memory_budget):
    if implementation.requires:
        pytest.importorskip(implementation.requires)
    reason = implementation.skip_reason(problem, memory_budget)
    if reason:
        pytest.skip(reason)
    loss_fn, note = implementation.prepare(problem)
    call = step(loss_fn, problem, mode)
    benchmark.group = f"{mode} {config}"
    benchmark.extra_info.update(implementation=implementation.name, note=note, device=device,
                                dtype=str(problem.x.dtype))
    if device == "cuda":  # each round ends when the GPU work it queued does
        benchmark(lambda: (call(), torch.cuda.synchronize()))
    else:
        benchmark(call)
