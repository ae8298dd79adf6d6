"""The demo runs (tiny sizes), so that it never rots. The benchmarks' smoke runs are in
test_benchmarks.py."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart_flows_the_cloud_towards_the_target():
    out = _run("examples/quickstart.py", "--points", "40", "--steps", "30", "--lr", "0.05")
    first, last = (float(line.split("loss")[1]) for line in out.splitlines()
                   if line.strip().startswith("step") and ("step    0" in line or "step   29" in line))
    assert last < first

