"""Section 4.2 of Genevay, Peyre & Cuturi (AISTATS 2018), Figure 3: a generator g_theta, an
MLP with two fully connected hidden layers, learns the digits by minimising the Sinkhorn loss
(cost |x - y|^2) between m generated and m real images, with Adam. The latent z is uniform on
[0, 1]^2, so g_theta(z) on an equispaced grid of z shows the learned manifold.

Real MNIST is read from --data-dir (the IDX file train-images-idx3-ubyte, optionally .gz);
without it the script trains on the 8x8 digits bundled with scikit-learn, and says so.

    python examples/mnist.py [--steps 3000] [--eps 1] [--iters 10] [--batch-size 200]
"""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import torch
from sklearn.datasets import load_digits

import sinkhorn_ext as sk
from common import (add_data_flags, download, hold_out, make_parser, parse_args, positive_float,
                    positive_int, save_image_grid, save_loss_curve, train, write_json)

IMAGES = "train-images-idx3-ubyte"
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
HELD_OUT_FRACTION = 1 / 6  # MNIST's 10000 of 70000
GRID = 15  # the manifold figure shows g_theta on a GRID x GRID grid of z


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format, gzipped or not) as an array."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (it starts with "
                         f"{raw[:4].hex()}, expected 000008 and the number of dimensions)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    values = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise ValueError(f"{path}: the header announces shape {shape}, but {values.size} values "
                         f"follow")
    return values.reshape(shape)


def load_images(data_dir: pathlib.Path, allow_download: bool):
    """Images as (N, side, side) floats in [0, 1], and the name of the data set."""
    found = [data_dir / name for name in (IMAGES, IMAGES + ".gz") if (data_dir / name).exists()]
    if not found and allow_download:
        download(MIRROR + IMAGES + ".gz", data_dir / (IMAGES + ".gz"))
        found = [data_dir / (IMAGES + ".gz")]
    if found:
        images = read_idx(found[0])
        print(f"MNIST: {len(images)} images from {found[0]}")
        return torch.tensor(images, dtype=torch.float32) / 255, "MNIST"
    print(f"no {IMAGES} in {data_dir}: using the offline stand-in, the 1797 8x8 digits bundled "
          f"with scikit-learn (pass --data-dir, or --download, for MNIST)")
    return torch.tensor(load_digits().images, dtype=torch.float32) / 16, "sklearn digits (8x8)"


def make_generator(dim: int, hidden: int) -> torch.nn.Module:
    """g_theta: [0, 1]^2 -> [0, 1]^dim, two fully connected hidden layers."""
    return torch.nn.Sequential(
        torch.nn.Linear(2, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, dim), torch.nn.Sigmoid())


def main():
    parser = make_parser(__doc__, out="runs/mnist", steps=3000, steps_are="Adam steps",
                         checkpoint_every=500)
    add_data_flags(parser, dataset="MNIST", files=IMAGES + "[.gz]")
    parser.add_argument("--eps", type=positive_float, default=1.0,
                        help="eps, the entropic regularisation")
    parser.add_argument("--iters", "-L", type=positive_int, default=10,
                        help="L, Sinkhorn iterations")
    parser.add_argument("--batch-size", "-m", type=positive_int, default=200,
                        help="m, generated and real images per step")
    parser.add_argument("--hidden", type=positive_int, default=256,
                        help="width of the generator's two hidden layers")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate")
    args = parse_args(parser)

    images, dataset = load_images(args.data_dir, args.download)
    side = images.shape[-1]
    training, held_out = (part.flatten(1).to(args.device)
                          for part in hold_out(images, HELD_OUT_FRACTION))
    generator = make_generator(side * side, args.hidden).to(args.device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=args.lr)

    def loss_to(real: torch.Tensor, count: int) -> torch.Tensor:
        z = torch.rand(count, 2, device=args.device)
        return sk.sinkhorn_loss(generator(z), real, eps=args.eps, iters=args.iters)

    def step():
        real = training[torch.randint(len(training), (args.batch_size,), device=args.device)]
        optimizer.zero_grad()
        loss = loss_to(real, args.batch_size)
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = train(step, objects={"generator": generator, "optimizer": optimizer},
                   checkpoint=args.out / "checkpoint.pt", args=args, desc="mnist")

    with torch.no_grad():
        # Same sizes on both sides, so that the data's own score is the level to compare with.
        count = min(1000, len(held_out), len(training))
        held_out_loss = loss_to(held_out[:count], count).item()
        data_loss = sk.sinkhorn_loss(training[:count], held_out[:count], eps=args.eps,
                                     iters=args.iters).item()
        grid = torch.linspace(0, 1, GRID, device=args.device)
        z = torch.cartesian_prod(grid, grid)  # row: first coordinate, column: second
        manifold = generator(z).reshape(-1, side, side).cpu().numpy()
    title = f"{dataset}: eps={args.eps:g}, L={args.iters}, m={args.batch_size}"
    save_image_grid(manifold, GRID, args.out / "manifold.png", title)
    save_loss_curve(losses, args.out / "loss_curve.png", title)
    tail = losses[-100:]
    write_json(args.out / "metrics.json", {
        "data": dataset, "steps": args.steps, "eps": args.eps, "L": args.iters,
        "m": args.batch_size, "lr": args.lr, "hidden": args.hidden,
        "losses": losses, "final_loss": sum(tail) / len(tail),
        "held_out_sinkhorn_loss": {
            "is": f"Sinkhorn loss between {count} generated and {count} held-out images "
                  f"(same eps and L)",
            "generator": held_out_loss,
            "training_images": data_loss}})


if __name__ == "__main__":
    main()
