"""Section 4.1 of Genevay, Peyre & Cuturi (AISTATS 2018), Table 1 and Figure 2: K = 3 uniform
ellipses fitted to Iris (projected to 3-D by PCA) with the Sinkhorn loss at eps = 1, 0.1,
0.001 and with a gaussian-kernel MMD.

The model mu_theta pushes zeta, uniform over K unit balls of equal mass, forward by
g_theta(z) = A_k z + alpha_k for z in the k-th ball; A_k starts at the identity, alpha_k at
the k-means centres. Each step draws m points of mu_theta and compares them with the 150
points of Iris (cost |x - y|^2, L Sinkhorn iterations).

    python examples/ellipses.py [--steps 1500] [--out runs/ellipses]
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris
from sklearn.decomposition import PCA

import sinkhorn_ext as sk
from common import (make_parser, parse_args, positive_float, positive_int, save_figure, train,
                    write_json)

K = 3
EPSILONS = (1.0, 0.1, 0.001)
CLASS_COLOURS = ("tab:blue", "tab:orange", "tab:green")


def iris_3d():
    """The 150 Iris flowers projected on their 3 principal axes, and their classes."""
    features, classes = load_iris(return_X_y=True)
    return torch.tensor(PCA(n_components=3).fit_transform(features)), classes


def uniform_ball(count: int, dim: int) -> torch.Tensor:
    direction = torch.nn.functional.normalize(torch.randn(count, dim), dim=1)
    return direction * torch.rand(count, 1) ** (1 / dim)


class Ellipses(torch.nn.Module):
    """mu_theta, theta = (A_k, alpha_k)_k: K ellipses {A_k z + alpha_k : |z| <= 1} of equal
    mass, with uniform density."""

    def __init__(self, centres: torch.Tensor):
        super().__init__()
        self.A = torch.nn.Parameter(torch.eye(centres.shape[1]).repeat(len(centres), 1, 1))
        self.alpha = torch.nn.Parameter(centres.clone())

    def forward(self, m: int) -> torch.Tensor:
        """m points of mu_theta; point i comes from ball i mod K, so the masses are equal."""
        ball = torch.arange(m) % len(self.alpha)
        z = uniform_ball(m, self.alpha.shape[1]).to(self.alpha)
        return torch.einsum("mij,mj->mi", self.A[ball], z) + self.alpha[ball]

    @torch.no_grad()
    def contains(self, points: torch.Tensor) -> torch.Tensor:
        """(K, N) booleans: point j lies inside ellipse k, i.e. |A_k^-1 (y_j - alpha_k)| <= 1."""
        offsets = points.unsqueeze(0) - self.alpha.unsqueeze(1)  # (K, N, d)
        z = torch.linalg.solve(self.A.unsqueeze(1), offsets.unsqueeze(-1)).squeeze(-1)
        return z.norm(dim=-1) <= 1


def table1(model: Ellipses, data: torch.Tensor, classes: np.ndarray):
    """Entry (i, j): the number of points of class j inside ellipse i, the ellipses ordered so
    that ellipse i is the one matched to class i, the matching maximising the diagonal.
    Also returns the class matched to each ellipse."""
    inside = model.contains(data).cpu().numpy()
    counts = np.stack([inside[:, classes == j].sum(1) for j in range(K)], axis=1)
    ellipses, matched_classes = linear_sum_assignment(counts, maximize=True)
    order = ellipses[np.argsort(matched_classes)]
    return counts[order].tolist(), matched_classes


def plot_fit(model: Ellipses, data, classes, matched_classes, title):
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot(projection="3d")
    points = data.cpu().numpy()
    for j in range(K):
        ax.scatter(*points[classes == j].T, s=8, color=CLASS_COLOURS[j], depthshade=False)
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 24), np.linspace(0, np.pi, 12))
    sphere = np.stack([np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v)], -1)
    A, alpha = model.A.detach().cpu().numpy(), model.alpha.detach().cpu().numpy()
    for k in range(K):
        surface = sphere @ A[k].T + alpha[k]
        ax.plot_wireframe(*np.moveaxis(surface, -1, 0), color=CLASS_COLOURS[matched_classes[k]],
                          lw=0.4, alpha=0.6)
    ax.set_title(title)
    return fig


def main():
    parser = make_parser(__doc__, out="runs/ellipses", steps=1500,
                         steps_are="Adam steps of each of the four fits", checkpoint_every=500)
    parser.add_argument("--batch-size", "-m", type=positive_int, default=200,
                        help="m, points drawn from the model at each step")
    parser.add_argument("--iters", "-L", type=positive_int, default=20,
                        help="L, Sinkhorn iterations")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="Adam's learning rate")
    parser.add_argument("--bandwidth", type=positive_float, default=0.5,
                        help="sigma of the MMD baseline's gaussian kernel "
                             "exp(-|x - y|^2 / (2 sigma^2))")
    args = parse_args(parser)

    data, classes = iris_3d()
    data = data.to(args.device, torch.float32)
    kmeans = KMeans(n_clusters=K, n_init=10, random_state=args.seed).fit(data.cpu().numpy())
    centres = torch.tensor(kmeans.cluster_centers_, dtype=torch.float32, device=args.device)

    losses = {"mmd": lambda x: sk.mmd_loss(x, data, kernel="gaussian", bandwidth=args.bandwidth)}
    for eps in EPSILONS:
        losses[f"eps={eps:g}"] = (
            lambda x, eps=eps: sk.sinkhorn_loss(x, data, eps=eps, iters=args.iters))

    tables, metrics = {}, {}
    for name, loss_fn in losses.items():
        torch.manual_seed(args.seed)  # every fit starts from the same draws
        model = Ellipses(centres)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

        def step():
            optimizer.zero_grad()
            loss = loss_fn(model(args.batch_size))
            loss.backward()
            optimizer.step()
            return loss.item()

        stem = name.replace("=", "")
        curve = train(step, objects={"model": model, "optimizer": optimizer},
                      checkpoint=args.out / f"checkpoint_{stem}.pt", args=args, desc=name)
        tables[name], matched_classes = table1(model, data, classes)
        print(f"Table 1, {name} (row i: ellipse matched to class i; column j: class j)")
        print("\n".join("  " + " ".join(f"{count:3d}" for count in row) for row in tables[name]))
        title = (f"MMD, gaussian kernel, σ={args.bandwidth:g}" if name == "mmd" else
                 f"Sinkhorn, {name.replace('eps', 'ε')}")
        save_figure(plot_fit(model, data, classes, matched_classes, title),
                    args.out / f"ellipses_{stem}.png")
        tail = curve[-100:]
        metrics[name] = {"final_loss": sum(tail) / len(tail),
                         "points_in_matched_ellipse": int(np.trace(tables[name]))}

    write_json(args.out / "table1.json", tables)
    write_json(args.out / "metrics.json", {
        "steps": args.steps, "m": args.batch_size, "L": args.iters, "lr": args.lr,
        "bandwidth": args.bandwidth, "final_loss is": "mean loss over the last 100 steps",
        "fits": metrics,
        "table1_before_training": table1(Ellipses(centres), data, classes)[0]})


if __name__ == "__main__":
    main()
