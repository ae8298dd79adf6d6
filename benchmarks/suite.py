"""What the benchmarks run, shared by the pytest-benchmark suite (benchmarks/test_speed.py) and
the report (benchmarks/report.py): the grids of configurations, their data, the
implementations (the fused backends, the two baselines, the peers POT and GeomLoss), the
memory estimates that decide what is skipped, and the one timing helper.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

import sinkhorn_ext as sk
from benchmarks import scaling_domain
from sinkhorn_ext._inputs import BACKENDS
from sinkhorn_ext._ops import KERNEL_DEVICES

# Every backend of the package but "auto", which only picks one of them: a backend added to
# sinkhorn_ext._inputs.BACKENDS is benchmarked with no change here.
FUSED_BACKENDS = tuple(backend for backend in BACKENDS if backend != "auto")

MODES = ("forward", "forward_backward")

# eps by dimension, as the targets set it: the paper's ellipses (d = 2) at 1, its MNIST
# (d = 784) at 10, and d = 3 at 0.5. Other dimensions (custom grids) take DEFAULT_EPS.
EPS_BY_DIM = {2: 1.0, 3: 0.5, 784: 10.0}
DEFAULT_EPS = 1.0
MNIST_DIM = 784

FULL_AXES = {"m": (64, 200, 1000, 2048, 4096), "d": (2, 3, 784), "L": (10, 20, 100)}


@dataclass(frozen=True)
class Config:
    """One problem size: m = n points in dimension d, L iterations, regularisation eps."""

    m: int
    d: int
    iters: int
    eps: float

    def __str__(self):
        return f"m=n={self.m} d={self.d} L={self.iters} eps={self.eps:g}"

    @property
    def id(self):
        return f"m{self.m}-d{self.d}-L{self.iters}-eps{self.eps:g}"


def config(m, d, iters) -> Config:
    return Config(m, d, iters, EPS_BY_DIM.get(d, DEFAULT_EPS))


@dataclass(frozen=True)
class Target:
    """Issue 4's target for a configuration: fwd+bwd speed-up over the faster baseline, and for
    one of them also peak extra memory at most a fraction of that baseline's."""

    label: str
    speedup: float
    memory_fraction: Optional[float] = None


TARGETS = {
    config(200, 2, 20): Target("paper's ellipses", 15),
    config(200, 784, 10): Target("paper's MNIST", 3),
    config(1000, 3, 100): Target("", 4),
    config(2048, 3, 50): Target("", 5, memory_fraction=0.1),
}
# The target for one Sinkhorn iteration of the fused forward: within this factor of two
# torch.mv over an m x n matrix.
PHYSICAL_LIMIT_TARGET = 2.0


def _product(m, d, L) -> List[Config]:
    return [config(*values) for values in itertools.product(m, d, L)]


GRIDS = {
    "smoke": [config(16, 2, 5), config(24, MNIST_DIM, 5)],  # tiny: the tests' smoke run
    "small": _product((64, 200), (2, 3, 784), (10, 20)),
    "targets": list(TARGETS),
    "full": _product(FULL_AXES["m"], FULL_AXES["d"], FULL_AXES["L"]),
    # Small eps, where max C / eps rules out the scaling form (and the scaling baseline): the
    # log-domain kernels of the fused backends against the reference and POT's sinkhorn_log.
    "small-eps": [Config(200, 2, 20, 0.01), Config(1000, 3, 20, 0.01)],
}


def grid(spec: str) -> List[Config]:
    """The configurations of a named grid (GRIDS), or of a spec such as "m=64,200 d=2 L=10":
    the product of the axes given, each missing axis taking the full grid's values."""
    if spec in GRIDS:
        return GRIDS[spec]
    axes = dict(FULL_AXES)
    for item in spec.split():
        key, sep, values = item.partition("=")
        if not sep or key not in axes:
            raise ValueError(f"grid must be one of {sorted(GRIDS)} or axes like "
                             f"'m=64,200 d=2 L=10', got {spec!r}")
        axes[key] = tuple(int(v) for v in values.split(","))
    return _product(axes["m"], axes["d"], axes["L"])


def grid_name(spec: str) -> str:
    return spec if spec in GRIDS else "custom"


@dataclass(frozen=True)
class Problem:
    config: Config
    x: torch.Tensor  # (m, d), no gradient
    y: torch.Tensor  # (n, d)

    @functools.cached_property
    def scaling_safe(self) -> bool:
        """Whether the scaling domain is safe for all three terms of the loss: max C / eps at
        most half the exponent of the dtype's smallest normal, so K = exp(-C/eps) is far from
        underflow and the scalings a, b (within exp(+-max C/eps) of the weights) stay in
        range."""
        limit = -0.5 * math.log(torch.finfo(self.x.dtype).tiny)
        return max_cost(self.x, self.y) / self.config.eps <= limit


def max_cost(x, y, rows=256) -> float:
    """The largest squared distance within and between the clouds, by blocks of rows so as to
    hold no m x n temporary (the memory probe runs this before it reads its starting peak)."""
    with torch.no_grad():
        return max(
            scaling_domain.squared_distances(u[i:i + rows], v).max().item()
            for u, v in ((x, y), (x, x), (y, y))
            for i in range(0, u.shape[0], rows)
        )


def make_problem(config: Config, dtype=torch.float32, device="cpu", seed=0) -> Problem:
    """Clouds for a configuration, the same on every device for a seed. Uniform in [0, 1]^d, or
    for d = 784 MNIST-like images: about 19% of the pixels on (MNIST's share), with
    intensities in [0.5, 1]. At the eps of EPS_BY_DIM neither underflows the scaling domain."""
    gen = torch.Generator().manual_seed(seed)

    def cloud():
        points = torch.rand(config.m, config.d, dtype=dtype, generator=gen)
        if config.d == MNIST_DIM:
            on = torch.rand(config.m, config.d, generator=gen) < 0.19
            points = torch.where(on, 0.5 + 0.5 * points, 0)
        return points.to(device)

    return Problem(config, cloud(), cloud())


# --- implementations --------------------------------------------------------------------------

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Implementation:
    name: str
    role: str  # "fused"; "baseline" (the two: speed-ups are over the faster); "peer"
    title: str  # for tables and plots
    # (problem) -> (loss(x, y), a note on how it was set up, "" if none)
    prepare: Callable[[Problem], Tuple[LossFn, str]]
    # (problem) -> estimated peak extra bytes of one forward+backward of the loss
    peak_bytes: Callable[[Problem], float]
    # (problem) -> why it does not apply to this problem, or None
    unsuitable: Callable[[Problem], Optional[str]] = lambda problem: None
    requires: Optional[str] = None  # the module it needs, if any

    def skip_reason(self, problem: Problem, memory_budget: float) -> Optional[str]:
        """Why it is not run on this problem (None: it is). Memory is estimated, not tried:
        the reference keeps ~2L copies of each m x n matrix for autograd."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed"
        estimate = self.peak_bytes(problem)
        if estimate > memory_budget:
            return (f"estimated peak {estimate / 2**30:.1f} GiB exceeds the memory budget of "
                    f"{memory_budget / 2**30:.1f} GiB")
        return self.unsuitable(problem)


def _pairs(problem: Problem) -> int:
    """The entries of the three cost matrices of the debiased loss (xy, xx, yy)."""
    m = n = problem.config.m
    return m * n + m * m + n * n


def _itemsize(problem: Problem) -> int:
    return problem.x.element_size()


def auto_backend(problem: Problem) -> str:
    """The backend that sinkhorn_loss(..., backend="auto") runs for this problem."""
    return sk.api.resolve_backend("auto", problem.x, problem.y, loss=True)


def _fused(backend: str) -> Implementation:
    def prepare(problem):
        c = problem.config
        return (lambda x, y: sk.sinkhorn_loss(x, y, eps=c.eps, iters=c.iters, backend=backend)), ""

    def peak_bytes(problem):
        m, itemsize = problem.config.m, _itemsize(problem)
        if backend == "online":  # the histories of the three terms, and per-thread sums
            return (6 * problem.config.iters + 16 * (problem.config.d + 1)) * m * itemsize + 2**26
        # Three m x n arrays for one term at a time, and allocator slack.
        return 8 * m ** 2 * itemsize

    return Implementation(f"fused-{backend}", "fused", f"fused {backend}", prepare, peak_bytes)


def _prepare_reference(problem):
    c = problem.config
    return (lambda x, y: sk.reference.sinkhorn_loss(x, y, eps=c.eps, iters=c.iters)), ""


def _reference_peak_bytes(problem):
    # Autograd keeps two m x n tensors per iteration (the logsumexp input and output) and a
    # few more per term; its cost matrix broadcasts x_i - y_j, m x n x d, kept for backward,
    # and the backward of one term holds two more of those.
    c = problem.config
    pairs = _pairs(problem)
    return _itemsize(problem) * (pairs * (2 * c.iters + 4) + (pairs + 2 * c.m ** 2) * c.d)


def _prepare_scaling_domain(problem):
    c = problem.config
    return (lambda x, y: scaling_domain.sinkhorn_loss(x, y, eps=c.eps, iters=c.iters)), ""


def _scaling_unsafe(problem):
    if problem.scaling_safe:
        return None
    return "exp(-C/eps) would underflow in the scaling domain (max C / eps too large)"


def _prepare_pot(problem):
    """ot.sinkhorn2 on torch tensors (POT's torch backend, autograd through its loop) for
    exactly L iterations: stopThr=0 never stops it early. Its scaling method "sinkhorn" where
    that is safe, else its log-domain "sinkhorn_log". The cost is ot.dist, |x - y|^2 like ours,
    and the loss debiased as ours. POT's iterations update v first, from u = 1/m."""
    import ot

    c = problem.config
    method = "sinkhorn" if problem.scaling_safe else "sinkhorn_log"

    def cost(u, v):
        a = u.new_full((u.shape[0],), 1 / u.shape[0])
        b = v.new_full((v.shape[0],), 1 / v.shape[0])
        return ot.sinkhorn2(a, b, ot.dist(u, v), c.eps, method=method, numItermax=c.iters,
                            stopThr=0, warn=False)

    return (lambda x, y: 2 * cost(x, y) - cost(x, x) - cost(y, y)), f"method={method}"


def _pot_peak_bytes(problem):
    # M, K, K/a and the plan per term; "sinkhorn_log" keeps two m x n tensors per iteration.
    per_pair = 8 if problem.scaling_safe else 2 * problem.config.iters + 8
    return _itemsize(problem) * _pairs(problem) * per_pair


def geomloss_parameters(problem: Problem) -> Dict[str, float]:
    """SamplesLoss arguments for the same kernel and L steps. Its p = 2 cost is |x - y|^2 / 2
    with eps = blur^2, so blur = sqrt(eps / 2) gives our exp(-C/eps). It anneals eps from
    diameter^2 down to blur^2 (eps-scaling) in 2 + ceil(log(blur/diameter) / log(scaling))
    steps; scaling = (blur/diameter)^(1/(L - 2.5)) makes that L. The diameter is GeomLoss's own
    estimate (the bounding box's diagonal), passed so that the schedule is known here."""
    x, y, c = problem.x, problem.y, problem.config
    both = torch.cat([x, y])
    diameter = (both.max(0).values - both.min(0).values).norm().item()
    blur = math.sqrt(c.eps / 2)
    scaling = (blur / diameter) ** (1 / (c.iters - 2.5)) if c.iters >= 3 else math.nan
    return {"blur": blur, "diameter": diameter, "scaling": scaling}


def _prepare_geomloss(problem):
    """GeomLoss is a peer, not the same algorithm: eps-scaling with symmetric (averaged)
    updates, its entropic S_eps rather than 2 W - W - W (other values), and a gradient through
    a last extrapolation step only, not through the loop."""
    from geomloss import SamplesLoss

    params = geomloss_parameters(problem)
    loss = SamplesLoss("sinkhorn", p=2, debias=True, backend="tensorized", **params)
    return loss, " ".join(f"{key}={value:.3g}" for key, value in params.items())


def _geomloss_unsuitable(problem):
    params = geomloss_parameters(problem)
    if problem.config.iters < 3 or params["blur"] >= params["diameter"]:
        return "eps-scaling has no L steps to map here (needs L >= 3 and sqrt(eps/2) < diameter)"
    return None


def implementations() -> List[Implementation]:
    """The fused backends, then the two baselines, then the peers."""
    return [
        *(_fused(backend) for backend in FUSED_BACKENDS),
        Implementation("reference", "baseline", "reference", _prepare_reference,
                       _reference_peak_bytes),
        # C, K and the products that form the plan, per term.
        Implementation("scaling-domain", "baseline", "Alg. 2 scaling",
                       _prepare_scaling_domain, lambda p: 8 * _pairs(p) * _itemsize(p),
                       _scaling_unsafe),
        Implementation("pot", "peer", "POT sinkhorn2", _prepare_pot, _pot_peak_bytes,
                       requires="ot"),
        # C_xy, C_yx, C_xx, C_yy, softmin temporaries and the last step's autograd.
        Implementation("geomloss", "peer", "GeomLoss", _prepare_geomloss,
                       lambda p: 16 * p.config.m ** 2 * _itemsize(p), _geomloss_unsuitable,
                       requires="geomloss"),
    ]


def implementation(name: str) -> Implementation:
    return next(impl for impl in implementations() if impl.name == name)


def default_memory_budget(device: str) -> float:
    """Bytes an implementation may be estimated to need: SINKHORN_BENCH_MEMORY_GB if set, else
    half of the machine's memory (of the GPU's, on cuda)."""
    if "SINKHORN_BENCH_MEMORY_GB" in os.environ:
        return float(os.environ["SINKHORN_BENCH_MEMORY_GB"]) * 2**30
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory / 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2


def cuda_unavailable_reason() -> Optional[str]:
    """Why nothing can run on cuda here, or None: it needs a GPU and a CUDA build."""
    if not torch.cuda.is_available():
        return (f"no GPU available (torch {torch.__version__}, CUDA {torch.version.cuda}); "
                f"use --device cpu")
    if "cuda" not in KERNEL_DEVICES:
        return ("this build of sinkhorn_ext has no CUDA kernels; rebuild it with "
                "FORCE_CUDA=1 pip install --no-build-isolation . (see README.md)")
    return None


# --- timing ------------------------------------------------------------------------------------

def step(loss_fn: LossFn, problem: Problem, mode: str) -> Callable[[], None]:
    """One call of a mode: "forward" on inputs without gradient, "forward_backward" with the
    gradient with respect to x."""
    if mode == "forward":
        return lambda: loss_fn(problem.x, problem.y)

    def forward_backward():
        loss_fn(problem.x.detach().requires_grad_(), problem.y).backward()

    return forward_backward


# The rounds in which interleaved_medians_ms spreads the calls of each function.
TIMING_ROUNDS = 5


def interleaved_medians_ms(fns: Dict[object, Callable[[], object]], device: str, repeats: int,
                           max_seconds: float = math.inf, warmup: int = 1,
                           min_seconds: float = 0.0,
                           rounds: int = TIMING_ROUNDS) -> Dict[object, float]:
    """The median wall time of each of fns in milliseconds, their calls interleaved: after
    `warmup` calls of each, `rounds` rounds in which each fn in turn is called for its share,
    until it has had (round / rounds) of `repeats` calls and of min_seconds (a short call is
    timed many times), so that a slow phase of a shared machine weighs on all of them alike
    instead of on whichever ran then. Every fn gets three calls at least; one is left out of
    the rounds once max_seconds of calls and three calls are done. On cuda each call is
    bracketed by torch.cuda.synchronize(), so that it counts the GPU work it queued, not only
    the launches."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):  # on cuda: context, allocator, kernel attributes
            fn()
    times = {name: [] for name in fns}
    spent = dict.fromkeys(fns, 0.0)  # seconds of timed calls
    for done in range(1, rounds + 1):
        share = done / rounds
        for name, fn in fns.items():
            calls = times[name]
            while len(calls) < 3 or (spent[name] < max_seconds
                                     and (len(calls) < repeats * share
                                          or spent[name] < min_seconds * share)):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                calls.append(time.perf_counter() - start)
                spent[name] += calls[-1]
    return {name: statistics.median(calls) * 1e3 for name, calls in times.items()}
