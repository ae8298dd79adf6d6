"""Section 4.2 of Genevay, Peyre & Cuturi (AISTATS 2018), "learning the cost", Algorithm 1: a
DCGAN generator g_theta trained on CIFAR-10 against the Sinkhorn loss with the learned cost
c_phi(x, y) = |f_phi(x) - f_phi(y)|, f_phi a DCGAN-style convolutional encoder to R^p. Each
generator step follows n_c critic steps that maximise the loss over phi (RMSProp, weights
clipped to [-c, c]); --loss mmd gives the paper's baseline, a gaussian-kernel MMD on the same
learned features.

Real CIFAR-10 is read from --data-dir (the python version: cifar-10-batches-py/data_batch_*);
without it the script trains on 32x32 patches cut from the two photographs bundled with
scikit-learn, and says so. Evaluation: the inception score where torchvision's pretrained
Inception v3 is on this machine, otherwise an offline metric; the output names which.

    python examples/cifar.py [--steps 300] [--eps 10] [--loss sinkhorn|mmd]
"""

from __future__ import annotations

import copy
import pathlib
import pickle
import tarfile

import numpy as np
import torch
from sklearn.datasets import load_sample_images

import sinkhorn_ext as sk
from common import (add_data_flags, download, hold_out, make_parser, parse_args, positive_float,
                    positive_int, save_image_grid, save_loss_curve, train, write_json)

BATCHES = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
HELD_OUT_FRACTION = 1 / 6  # CIFAR-10's test set is 10000 of 60000
# The offline metric: the Sinkhorn loss between generated and held-out images with pixels in
# [0, 1] and the cost |x - y|^2 / D, the mean squared pixel difference (about 0.15 between two
# patches of the photographs; 0.2 between two CIFAR-10 images).
METRIC_EPS, METRIC_ITERS = 0.05, 100
SAMPLE_GRID = 8  # the sample figures show SAMPLE_GRID x SAMPLE_GRID images


def read_cifar_batches(directory: pathlib.Path) -> np.ndarray:
    """The images of CIFAR-10's python batches data_batch_* in `directory`, (N, 32, 32, 3)
    uint8. The batches are pickles: read only files you trust."""
    files = sorted(directory.glob("data_batch_*"))
    if not files:
        raise FileNotFoundError(f"no data_batch_* files in {directory}")
    images = []
    for file in files:
        with open(file, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        # Each row holds the 1024 red, then green, then blue values of one image, row-major.
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    return np.concatenate(images).transpose(0, 2, 3, 1)


def photograph_patches(stride: int = 8):
    """The offline stand-in: (training, held-out) 32x32 patches, (N, 32, 32, 3) uint8, of
    scikit-learn's two sample photographs; the held-out ones are cut from the right fifth of
    each photograph, so the two sets do not overlap."""
    training, held_out = [], []
    for photo in load_sample_images().images:
        split = int(photo.shape[1] * 0.8)
        for part, patches in ((photo[:, :split], training), (photo[:, split:], held_out)):
            tiles = torch.tensor(part).unfold(0, 32, stride).unfold(1, 32, stride)
            patches.append(tiles.permute(0, 1, 3, 4, 2).reshape(-1, 32, 32, 3).numpy())
    return np.concatenate(training), np.concatenate(held_out)


def load_images(data_dir: pathlib.Path, allow_download: bool):
    """(training, held-out) images (N, 3, 32, 32) in [-1, 1], and the name of the data set."""
    directory = data_dir / BATCHES
    if not any(directory.glob("data_batch_*")) and allow_download:
        archive = data_dir / "cifar-10-python.tar.gz"
        download(URL, archive)
        with tarfile.open(archive) as tar:
            tar.extractall(data_dir, filter="data")
    if any(directory.glob("data_batch_*")):
        images = read_cifar_batches(directory)
        print(f"CIFAR-10: {len(images)} images from {directory}")
        parts, dataset = hold_out(torch.tensor(images), HELD_OUT_FRACTION), "CIFAR-10"
    else:
        print(f"no {BATCHES}/data_batch_* in {data_dir}: using the offline stand-in, 32x32 "
              f"patches of the two sample photographs bundled with scikit-learn (pass "
              f"--data-dir, or --download, for CIFAR-10)")
        parts = [torch.tensor(part) for part in photograph_patches()]
        dataset = "photograph patches (offline stand-in)"
    training, held_out = (part.permute(0, 3, 1, 2).float() / 127.5 - 1 for part in parts)
    return training, held_out, dataset


def make_generator(latent: int, width: int) -> torch.nn.Module:
    """g_theta: z (latent, 1, 1) -> image (3, 32, 32) in [-1, 1], DCGAN."""
    def up(inputs, outputs, stride, padding):
        return [torch.nn.ConvTranspose2d(inputs, outputs, 4, stride, padding, bias=False),
                torch.nn.BatchNorm2d(outputs), torch.nn.ReLU()]
    return torch.nn.Sequential(
        *up(latent, 4 * width, 1, 0), *up(4 * width, 2 * width, 2, 1), *up(2 * width, width, 2, 1),
        torch.nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), torch.nn.Tanh())


def make_encoder(features: int, width: int) -> torch.nn.Module:
    """f_phi: image (3, 32, 32) -> R^features, DCGAN discriminator-style. Its batch norms have
    no affine parameters, so that clipping phi leaves the features' scale O(1)."""
    def down(inputs, outputs):
        return [torch.nn.Conv2d(inputs, outputs, 4, 2, 1, bias=False),
                torch.nn.BatchNorm2d(outputs, affine=False), torch.nn.LeakyReLU(0.2)]
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 4, 2, 1), torch.nn.LeakyReLU(0.2),
        *down(width, 2 * width), *down(2 * width, 4 * width),
        torch.nn.Conv2d(4 * width, features, 4, 1, 0), torch.nn.Flatten())


def inception_score(probabilities: torch.Tensor, splits: int = 10):
    """exp(E_x KL(p(y|x) || p(y))) of Salimans et al. (2016) from class probabilities (N, C):
    mean and standard deviation over `splits` parts."""
    scores = []
    for part in probabilities.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return scores.mean().item(), scores.std(unbiased=False).item()


def local_inception(device):
    """torchvision's Inception v3 with its ImageNet weights if both are on this machine (it
    never downloads), else None."""
    try:
        from torchvision.models import Inception_V3_Weights, inception_v3
    except ImportError:
        return None
    weights = Inception_V3_Weights.IMAGENET1K_V1
    cached = pathlib.Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[1]
    if not cached.exists():
        return None
    return inception_v3(weights=weights).eval().to(device)


@torch.no_grad()
def inception_probabilities(model, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=images.device).view(1, 3, 1, 1)
    probabilities = []
    for chunk in images.split(batch):
        resized = torch.nn.functional.interpolate((chunk + 1) / 2, size=(299, 299),
                                                  mode="bilinear", align_corners=False)
        probabilities.append(model((resized - mean) / std).softmax(1))
    return torch.cat(probabilities)


def metric_loss(images: torch.Tensor, reference: torch.Tensor) -> float:
    """The offline metric (METRIC_EPS, METRIC_ITERS) between images in [-1, 1]."""
    def pixels(t):
        return (t.flatten(1) + 1) / (2 * t[0].numel() ** 0.5)  # so that |x - y|^2 = MSE
    return sk.sinkhorn_loss(pixels(images), pixels(reference), eps=METRIC_EPS,
                            iters=METRIC_ITERS).item()


def main():
    parser = make_parser(__doc__, out="runs/cifar", steps=300,
                         steps_are="generator steps, each after n_c critic steps",
                         checkpoint_every=50)
    add_data_flags(parser, dataset="CIFAR-10", files=f"{BATCHES}/data_batch_1..5")
    parser.add_argument("--loss", choices=("sinkhorn", "mmd"), default="sinkhorn",
                        help="the Sinkhorn loss with the learned cost, or the MMD baseline")
    parser.add_argument("--eps", type=positive_float, default=10.0,
                        help="eps of the Sinkhorn loss (the paper ran 100, 10 and 1)")
    parser.add_argument("--iters", "-L", type=positive_int, default=10,
                        help="L, Sinkhorn iterations")
    parser.add_argument("--bandwidth", type=positive_float, default=1.0,
                        help="sigma of the MMD baseline's gaussian kernel on the features")
    parser.add_argument("--batch-size", "-m", type=positive_int, default=100,
                        help="m, generated and real images per step")
    parser.add_argument("--critic-steps", type=positive_int, default=5,
                        help="n_c, critic steps per generator step")
    parser.add_argument("--clip", type=positive_float, default=0.01,
                        help="c: the critic's weights are clipped to [-c, c]")
    parser.add_argument("--lr", type=positive_float, default=2e-4,
                        help="RMSProp's learning rate, for both networks")
    parser.add_argument("--latent", type=positive_int, default=64,
                        help="dimension of z, uniform on [-1, 1]^latent")
    parser.add_argument("--features", type=positive_int, default=32,
                        help="p, the dimension of the learned features f_phi(x)")
    parser.add_argument("--width", type=positive_int, default=32,
                        help="channels of the first layer of the critic (and of the last of the "
                             "generator); DCGAN's is 64")
    parser.add_argument("--eval-samples", type=positive_int, default=500,
                        help="generated images for the evaluation (the paper's: 20000)")
    args = parse_args(parser)

    training, held_out, dataset = load_images(args.data_dir, args.download)
    training, held_out = training.to(args.device), held_out.to(args.device)
    generator = make_generator(args.latent, args.width).to(args.device)
    encoder = make_encoder(args.features, args.width).to(args.device)
    generator_optimizer = torch.optim.RMSprop(generator.parameters(), lr=args.lr)
    encoder_optimizer = torch.optim.RMSprop(encoder.parameters(), lr=args.lr)
    untrained_generator = copy.deepcopy(generator)  # the offline metric's point of comparison

    def latent(count):
        return torch.rand(count, args.latent, 1, 1, device=args.device) * 2 - 1

    def loss_between(fake, real):
        # One pass over both batches, so that the batch norms give x and y the same features.
        features = encoder(torch.cat([fake, real]))
        x, y = features[:len(fake)], features[len(fake):]
        if args.loss == "mmd":
            return sk.mmd_loss(x, y, kernel="gaussian", bandwidth=args.bandwidth)
        return sk.sinkhorn_loss(x, y, eps=args.eps, iters=args.iters, cost="euclidean")

    def real_batch():
        return training[torch.randint(len(training), (args.batch_size,), device=args.device)]

    def step():
        for _ in range(args.critic_steps):  # max over phi
            with torch.no_grad():
                fake = generator(latent(args.batch_size))
            encoder_optimizer.zero_grad()
            (-loss_between(fake, real_batch())).backward()
            encoder_optimizer.step()
            with torch.no_grad():
                for weight in encoder.parameters():
                    weight.clamp_(-args.clip, args.clip)
        generator_optimizer.zero_grad()  # min over theta
        loss = loss_between(generator(latent(args.batch_size)), real_batch())
        loss.backward()
        generator_optimizer.step()
        return loss.item()

    losses = train(step, objects={"generator": generator, "encoder": encoder,
                                  "generator_optimizer": generator_optimizer,
                                  "encoder_optimizer": encoder_optimizer},
                   checkpoint=args.out / "checkpoint.pt", args=args, desc=f"cifar {args.loss}")

    torch.manual_seed(args.seed)  # the same z and images in every run (the paper's Figure 4)
    z = latent(args.eval_samples)
    reference = held_out[torch.randperm(len(held_out), device=args.device)[:args.eval_samples]]
    with torch.no_grad():
        samples = generator.eval()(z)  # eval: the batch norms' running statistics
        untrained_samples = untrained_generator.eval()(z)

    def as_rgb(images):
        return ((images[:SAMPLE_GRID**2] + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()

    title = (f"{dataset}: MMD, sigma={args.bandwidth:g}" if args.loss == "mmd" else
             f"{dataset}: Sinkhorn, eps={args.eps:g}, L={args.iters}")
    save_image_grid(as_rgb(samples), SAMPLE_GRID, args.out / "samples.png", title)
    save_image_grid(as_rgb(reference), SAMPLE_GRID, args.out / "data.png",
                    f"{dataset}: held-out images")
    save_loss_curve(losses, args.out / "loss_curve.png", title)

    inception = local_inception(args.device)
    if inception is not None:
        metric = f"inception score of {args.eval_samples} images (higher is better)"

        def score(images):
            return inception_score(inception_probabilities(inception, images))[0]
    else:
        metric = (f"offline (no local Inception network for the inception score): Sinkhorn loss "
                  f"to {len(reference)} held-out images, pixels in [0, 1], cost mean squared "
                  f"pixel difference, eps={METRIC_EPS}, L={METRIC_ITERS} (lower is better)")

        def score(images):
            return metric_loss(images, reference)
    some_training = training[torch.randperm(len(training), device=args.device)][:len(reference)]
    evaluation = {"metric": metric, "generator": score(samples),
                  "untrained_generator": score(untrained_samples),
                  "training_images": score(some_training)}
    print(f"evaluation: {evaluation['metric']}: {evaluation['generator']:.5g}")
    write_json(args.out / "metrics.json", {
        "data": dataset, "loss": args.loss, "eps": args.eps, "L": args.iters,
        "bandwidth": args.bandwidth, "steps": args.steps, "m": args.batch_size,
        "critic_steps": args.critic_steps, "clip": args.clip, "lr": args.lr,
        "losses": losses, "evaluation": evaluation})


if __name__ == "__main__":
    main()
