"""Forward+backward time of sinkhorn_loss against sinkhorn_ext.reference, in one process.

    python -m benchmarks.speed_vs_reference --m 200 --n 200 --d 2 --eps 1 --iters 20
    python -m benchmarks.speed_vs_reference --device cuda --m 2000 --n 2000 --d 3

On CUDA each repeat is bracketed by torch.cuda.synchronize(), so that its time includes the
GPU work it queued, not only the launches. The header names the GPU.
"""

import argparse
import platform
import sys
import time

import torch

import sinkhorn_ext as sk
from sinkhorn_ext._ops import KERNEL_DEVICES


def time_forward_backward(loss_fn, x, y, eps, iters, repeats):
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def step():
        xl = x.detach().requires_grad_()
        loss_fn(xl, y, eps=eps, iters=iters).backward()

    for _ in range(3):  # warm-up (on CUDA: context, allocator, kernel attributes)
        step()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3  # median, ms


def check_cuda():
    """Exits with a message unless there is a GPU and this build of the extension has CUDA
    kernels."""
    if not torch.cuda.is_available():
        sys.exit(f"--device cuda: no GPU available (torch {torch.__version__}, "
                 f"CUDA {torch.version.cuda}); use --device cpu")
    if "cuda" not in KERNEL_DEVICES:
        sys.exit("--device cuda: this build of sinkhorn_ext has no CUDA kernels; rebuild it with "
                 "FORCE_CUDA=1 pip install --no-build-isolation . (see README.md)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=200)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--d", type=int, default=2)
    parser.add_argument("--eps", type=float, default=1.0)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda":
        check_cuda()

    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.m, args.d, dtype=dtype, generator=gen).to(args.device)
    y = torch.randn(args.n, args.d, dtype=dtype, generator=gen).to(args.device)
    fused = time_forward_backward(sk.sinkhorn_loss, x, y, args.eps, args.iters, args.repeats)
    ref = time_forward_backward(sk.reference.sinkhorn_loss, x, y, args.eps, args.iters,
                                args.repeats)
    if args.device == "cuda":
        print(f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, "
              f"torch {torch.__version__}")
    else:
        print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}")
    print(f"sinkhorn_loss fwd+bwd, m={args.m} n={args.n} d={args.d} eps={args.eps} "
          f"L={args.iters} {args.dtype} (median of {args.repeats})")
    print(f"  fused      {fused:8.2f} ms")
    print(f"  reference  {ref:8.2f} ms")
    print(f"  speed-up   {ref / fused:8.1f}x")


if __name__ == "__main__":
    main()
