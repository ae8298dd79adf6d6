"""Options of the pytest-benchmark suite. Each also reads an environment variable, so that a
smoke run can be chosen without touching the command line:

    pytest benchmarks --benchmark-only                              # the full grid (hours)
    pytest benchmarks --benchmark-only --sinkhorn-grid targets      # the issue's four targets
    SINKHORN_BENCH_GRID="m=200 d=2,3 L=20" pytest benchmarks --benchmark-only
    pytest benchmarks --sinkhorn-grid smoke --benchmark-disable     # each case once, untimed

SINKHORN_BENCH_MEMORY_GB sets the memory budget (default: half the machine's memory).
"""

import functools
import os

import pytest
import torch

from benchmarks.suite import (
    cuda_unavailable_reason, default_memory_budget, grid, implementations, make_problem,
)

OPTIONS = {  # option: (environment variable, default, help)
    "--sinkhorn-grid": ("SINKHORN_BENCH_GRID", "full",
                        "grid: smoke, small, targets, full, or axes like 'm=64,200 d=2 L=10'"),
    "--sinkhorn-device": ("SINKHORN_BENCH_DEVICE", "cpu", "cpu or cuda"),
    "--sinkhorn-dtype": ("SINKHORN_BENCH_DTYPE", "float32", "float32 or float64"),
}


def pytest_addoption(parser):
    group = parser.getgroup("sinkhorn benchmarks")
    for option, (variable, default, text) in OPTIONS.items():
        group.addoption(option, default=os.environ.get(variable, default),
                        help=f"{text} (environment: {variable}; default {default})")


def pytest_generate_tests(metafunc):
    if "config" in metafunc.fixturenames:
        configs = grid(metafunc.config.getoption("--sinkhorn-grid"))
        metafunc.parametrize("config", configs, ids=[c.id for c in configs])
    if "implementation" in metafunc.fixturenames:
        impls = implementations()
        metafunc.parametrize("implementation", impls, ids=[i.name for i in impls])


@pytest.fixture(scope="session")
def device(pytestconfig):
    device = pytestconfig.getoption("--sinkhorn-device")
    reason = cuda_unavailable_reason() if device == "cuda" else None
    if reason:
        pytest.skip(f"--sinkhorn-device cuda: {reason}")
    return device


@pytest.fixture(scope="session")
def memory_budget(device):
    return default_memory_budget(device)


@functools.lru_cache(maxsize=4)
def _problem(config, dtype, device):
    return make_problem(config, getattr(torch, dtype), device)


@pytest.fixture
def problem(config, device, pytestconfig):
    return _problem(config, pytestconfig.getoption("--sinkhorn-dtype"), device)
