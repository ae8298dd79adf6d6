"""What the example scripts share: the common flags, the device, checkpointed training with a
progress bar, data download, and the JSON and figures they write."""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import urllib.request

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Shows the defaults, and the script's docstring as it is written."""


def make_parser(description: str, *, out: str, steps: int, steps_are: str,
                checkpoint_every: int):
    """A parser with the flags every script has; `steps_are` says what --steps counts."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--device", default="auto",
                        help='"auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or '
                             '"cuda:N"')
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random draw: initialisation, latent samples, "
                             "mini-batches")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(out),
                        help="directory for all outputs: figures, metrics JSON, checkpoints")
    parser.add_argument("--steps", type=positive_int, default=steps,
                        help=f"number of {steps_are}")
    parser.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every,
                        help="write a checkpoint to --out every this many steps, and at the end")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out up to --steps (a run without "
                             "one starts afresh)")
    return parser


def add_data_flags(parser, *, dataset: str, files: str) -> None:
    parser.add_argument("--data-dir", type=pathlib.Path, default=pathlib.Path("data"),
                        help=f"directory holding {dataset} ({files}); without them the script "
                             f"trains on its offline stand-in")
    parser.add_argument("--download", action="store_true",
                        help=f"download {dataset} into --data-dir if it is not there (needs a "
                             f"network)")


def parse_args(parser) -> argparse.Namespace:
    """Parses the command line, makes --out, resolves --device and seeds torch."""
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.device = choose_device(args.device)
    torch.manual_seed(args.seed)
    return args


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device")
    return device


def download(url: str, path: pathlib.Path) -> None:
    print(f"downloading {url}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as file:
            shutil.copyfileobj(response, file)
    except OSError as error:
        raise SystemExit(f"--download: could not fetch {url} ({error}). Put the files in "
                         f"--data-dir yourself, or run without --download to train on the "
                         f"offline stand-in.") from error
    os.replace(partial, path)


def hold_out(data: torch.Tensor, fraction: float):
    """(training, held-out): the last `fraction` of the rows is held out for evaluation."""
    count = max(1, round(fraction * len(data)))
    return data[:-count], data[-count:]


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def train(step_fn, *, objects: dict, checkpoint: pathlib.Path, args, desc: str) -> list[float]:
    """Runs `step_fn() -> loss` for steps 1..args.steps behind a progress bar that shows the
    loss, and returns the losses of all steps.

    `objects` (modules and optimizers by name) and the torch random state are saved to
    `checkpoint` every args.checkpoint_every steps and at the end. With args.resume and a
    checkpoint there, training continues from it, and gives the losses that an uninterrupted
    run gives.
    """
    losses: list[float] = []
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for name, obj in objects.items():
            obj.load_state_dict(state[name])
        _set_rng_state(state["rng"])
        losses = state["losses"]
        if len(losses) > args.steps:
            raise SystemExit(f"{desc}: the checkpoint {checkpoint} is at step {len(losses)}, "
                             f"beyond --steps {args.steps}")
        print(f"{desc}: resuming from {checkpoint} at step {len(losses)}")
    elif args.resume:
        print(f"{desc}: no checkpoint at {checkpoint}, starting afresh")

    def save():
        state = {name: obj.state_dict() for name, obj in objects.items()}
        state.update(rng=_rng_state(), losses=losses)
        partial = checkpoint.with_name(checkpoint.name + ".part")
        torch.save(state, partial)
        os.replace(partial, checkpoint)  # an interrupted save leaves the previous checkpoint

    bar = tqdm(range(len(losses), args.steps), desc=desc, initial=len(losses), total=args.steps,
               dynamic_ncols=True)
    for step in bar:
        loss = step_fn()
        if not math.isfinite(loss):
            raise SystemExit(f"{desc}: the loss is {loss} at step {step + 1}; try a smaller "
                             f"learning rate")
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.5g}", refresh=False)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            save()
    bar.close()
    return losses


def write_json(path: pathlib.Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def save_figure(fig: Figure, path: pathlib.Path) -> None:
    fig.savefig(path, dpi=80, bbox_inches="tight")
    print(f"wrote {path}")


def save_loss_curve(losses, path: pathlib.Path, title: str) -> None:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def save_image_grid(images: np.ndarray, rows: int, path: pathlib.Path, title: str) -> None:
    """Tiles images (N, H, W) (gray) or (N, H, W, 3) (RGB), values in [0, 1], into `rows`
    rows with a 1-pixel white border, and saves the mosaic."""
    count, height, width = images.shape[:3]
    columns = math.ceil(count / rows)
    mosaic = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1, *images.shape[3:]))
    for index, image in enumerate(images):
        top, left = 1 + (index // columns) * (height + 1), 1 + (index % columns) * (width + 1)
        mosaic[top:top + height, left:left + width] = image
    fig = Figure(figsize=(6, 6 * mosaic.shape[0] / mosaic.shape[1] + 0.4))
    ax = fig.add_subplot()
    ax.imshow(mosaic.clip(0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    save_figure(fig, path)
