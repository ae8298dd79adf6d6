"""The example scripts run for a few steps on tiny data and write their outputs; --resume
continues a run exactly; the MNIST IDX and CIFAR-10 pickle loaders read files in the real
formats, written here; Table 1's matching and the inception score are right on known cases."""

import gzip
import json
import math
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
import cifar  # noqa: E402
import common  # noqa: E402
import ellipses  # noqa: E402
import mnist  # noqa: E402

COMMON_FLAGS = ("--device", "--seed", "--out", "--steps", "--checkpoint-every", "--resume")
TINY = {
    "ellipses.py": ["--batch-size", "30"],
    "mnist.py": ["--batch-size", "16", "--hidden", "8"],
    "cifar.py": ["--batch-size", "8", "--width", "4", "--features", "4", "--latent", "4",
                 "--critic-steps", "1", "--eval-samples", "16"],
}


def _run(script, *flags):
    # One thread: quicker than two on a busy machine, and the same in every run of a test.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *flags], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _train(script, out, steps, *flags, data_dir=None):
    data_dir = data_dir or out / "no-data"  # never the repository's data/
    return _run(script, "--out", str(out), "--steps", str(steps), "--seed", "3",
                *TINY[script], *(["--data-dir", str(data_dir)] if script != "ellipses.py" else []),
                *flags)


def _metrics(out):
    return json.loads((out / "metrics.json").read_text())


def _assert_pngs(out, *names):
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.parametrize("script", sorted(TINY))
def test_help_documents_the_common_flags(script):
    text = _run(script, "--help")
    for flag in COMMON_FLAGS + tuple(TINY[script][::2]):
        assert flag in text, flag
    if script != "ellipses.py":
        assert "--data-dir" in text and "--download" in text


def test_ellipses_writes_table1_figures_and_metrics(tmp_path):
    _train("ellipses.py", tmp_path, 2)
    tables = json.loads((tmp_path / "table1.json").read_text())
    assert list(tables) == ["mmd", "eps=1", "eps=0.1", "eps=0.001"]
    for table in tables.values():
        counts = np.array(table)
        assert counts.shape == (3, 3) and all(isinstance(c, int) for row in table for c in row)
        assert (counts >= 0).all() and (counts.sum(0) <= 50).all()  # 50 flowers per class
    fits = _metrics(tmp_path)["fits"]
    assert all(math.isfinite(fit["final_loss"]) for fit in fits.values())
    _assert_pngs(tmp_path, "ellipses_mmd.png", "ellipses_eps1.png", "ellipses_eps0.1.png",
                 "ellipses_eps0.001.png")


def test_table1_matches_ellipses_to_classes_to_maximise_the_diagonal():
    # Class j sits around centre j; the ellipses are listed in another order, one per class.
    centres = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, 0]])
    offsets = torch.tensor([[0.1, 0, 0], [0, 0.5, 0], [0, 0, 1.5]])  # inside a radius-1 ball?
    data = (centres.unsqueeze(1) + offsets).reshape(-1, 3)  # 3 points per class
    classes = np.repeat(np.arange(3), 3)
    model = ellipses.Ellipses(centres[[2, 0, 1]])
    table, matched = ellipses.table1(model, data, classes)
    assert table == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert list(matched) == [2, 0, 1]
    with torch.no_grad():
        model.A[1] *= 2  # the ellipse on class 0 grows to radius 2: the third point is inside
    assert ellipses.table1(model, data, classes)[0][0] == [3, 0, 0]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist")
    return out, _train("mnist.py", out, 4)


def test_mnist_trains_on_the_offline_stand_in_and_says_so(mnist_run):
    out, stdout = mnist_run
    assert "offline stand-in" in stdout
    metrics = _metrics(out)
    assert metrics["data"] == "sklearn digits (8x8)"
    assert len(metrics["losses"]) == 4 and all(map(math.isfinite, metrics["losses"]))
    assert math.isfinite(metrics["held_out_sinkhorn_loss"]["generator"])
    _assert_pngs(out, "manifold.png", "loss_curve.png")
    assert (out / "checkpoint.pt").exists()


def test_resume_continues_the_run_exactly(mnist_run, tmp_path):
    straight, _ = mnist_run
    _train("mnist.py", tmp_path, 2)
    assert "resuming from" in _train("mnist.py", tmp_path, 4, "--resume")
    assert _metrics(tmp_path)["losses"] == _metrics(straight)["losses"]


def _write_idx(path, images):
    header = struct.pack(">BBBB", 0, 0, 8, images.ndim) + struct.pack(f">{images.ndim}I",
                                                                     *images.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as file:
        file.write(header + images.tobytes())


@pytest.mark.parametrize("name", [mnist.IMAGES, mnist.IMAGES + ".gz"])
def test_idx_reader_reads_the_mnist_format(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / name, images)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / name), images)


def test_idx_reader_rejects_other_files(tmp_path):
    (tmp_path / "labels").write_bytes(struct.pack(">BBBBI", 0, 0, 9, 1, 3) + bytes(12))
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        mnist.read_idx(tmp_path / "labels")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, 2, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match=r"announces shape \(2, 28, 28\), but 100 values"):
        mnist.read_idx(tmp_path / "short")


def test_mnist_trains_on_idx_files_in_data_dir(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / (mnist.IMAGES + ".gz"), images)
    stdout = _train("mnist.py", tmp_path / "out", 2, data_dir=tmp_path)
    assert "MNIST: 12 images" in stdout and "offline" not in stdout
    assert _metrics(tmp_path / "out")["data"] == "MNIST"


def _write_cifar_batches(directory, images_per_batch):
    """CIFAR-10's python batches: pickled dicts with bytes keys, one image per row of 'data'
    (its 1024 red, 1024 green, 1024 blue values); returns the images as (N, 32, 32, 3)."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(2)
    images = []
    for index, count in enumerate(images_per_batch, start=1):
        batch = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        content = {b"batch_label": f"training batch {index} of 5".encode(),
                   b"labels": rng.integers(0, 10, count).tolist(),
                   b"data": batch.transpose(0, 3, 1, 2).reshape(count, 3072),
                   b"filenames": [b"image.png"] * count}
        with open(directory / f"data_batch_{index}", "wb") as file:
            pickle.dump(content, file, protocol=2)
        images.append(batch)
    return np.concatenate(images)


def test_cifar_reader_reads_the_python_batches(tmp_path):
    expected = _write_cifar_batches(tmp_path / cifar.BATCHES, [3, 2])
    images = cifar.read_cifar_batches(tmp_path / cifar.BATCHES)
    assert images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(images, expected)


def test_cifar_trains_on_the_offline_stand_in_and_names_its_metric(tmp_path):
    stdout = _train("cifar.py", tmp_path, 2)
    assert "offline stand-in" in stdout and "evaluation: offline" in stdout
    metrics = _metrics(tmp_path)
    assert metrics["data"] == "photograph patches (offline stand-in)"
    assert len(metrics["losses"]) == 2 and all(map(math.isfinite, metrics["losses"]))
    evaluation = metrics["evaluation"]
    assert evaluation["metric"].startswith("offline")
    assert all(math.isfinite(evaluation[key])
               for key in ("generator", "untrained_generator", "training_images"))
    _assert_pngs(tmp_path, "samples.png", "data.png", "loss_curve.png")


def test_cifar_trains_on_batches_in_data_dir_with_the_mmd_baseline(tmp_path):
    _write_cifar_batches(tmp_path / cifar.BATCHES, [10, 8])
    stdout = _train("cifar.py", tmp_path / "out", 2, "--loss", "mmd", data_dir=tmp_path)
    assert "CIFAR-10: 18 images" in stdout and "offline stand-in" not in stdout
    metrics = _metrics(tmp_path / "out")
    assert metrics["data"] == "CIFAR-10" and metrics["loss"] == "mmd"
    assert all(map(math.isfinite, metrics["losses"]))


def test_offline_patches_do_not_overlap_between_training_and_held_out():
    training, held_out = cifar.photograph_patches(stride=16)
    assert training.shape[1:] == held_out.shape[1:] == (32, 32, 3)
    held = {patch.tobytes() for patch in held_out}
    assert not any(patch.tobytes() in held for patch in training)


def test_inception_score_on_known_predictions():
    uniform = torch.full((40, 10), 0.1)
    assert cifar.inception_score(uniform, splits=2)[0] == pytest.approx(1.0)
    confident = torch.eye(4).repeat(10, 1)  # each of 4 classes, predicted with certainty
    assert cifar.inception_score(confident, splits=1)[0] == pytest.approx(4.0)


def test_download_failure_says_what_to_do_instead(tmp_path):
    with pytest.raises(SystemExit, match="could not fetch .* run without --download"):
        common.download("http://127.0.0.1:9/train-images-idx3-ubyte.gz", tmp_path / "x.gz")
    assert not any(tmp_path.iterdir())
