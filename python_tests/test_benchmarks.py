"""Smoke runs of the benchmarks (tiny sizes, one call each) so that they never rot, and the
check that the scaling-domain baseline computes the reference's loss. The benchmarks proper are
not run here: their figures are in BENCHMARKS.md."""

import json
import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch

import sinkhorn_ext as sk

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def suite(monkeypatch):
    """benchmarks.suite, importable from the repository root (benchmarks/ is not installed)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import suite

    return suite


def _run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    return result


def test_scaling_domain_baseline_equals_the_reference_in_float64(suite):
    from benchmarks import scaling_domain

    gen = torch.Generator().manual_seed(0)
    weighted = [torch.rand(7, 3, dtype=torch.float64, generator=gen),
                torch.rand(5, 3, dtype=torch.float64, generator=gen),
                *(w / w.sum() for w in (torch.rand(k, dtype=torch.float64, generator=gen) + 0.1
                                        for k in (7, 5)))]
    smoke = [(p.x, p.y, None, None) for p in
             (suite.make_problem(c, torch.float64) for c in suite.GRIDS["smoke"])]
    for x, y, a, b in [weighted] + smoke:
        inputs = [t.clone().requires_grad_() for t in (x, y)]
        options = dict(eps=0.5, iters=10, x_weights=a, y_weights=b)
        ours = scaling_domain.sinkhorn_loss(*inputs, **options)
        ref = sk.reference.sinkhorn_loss(*inputs, **options)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
        for g_ours, g_ref in zip(torch.autograd.grad(ours, inputs),
                                 torch.autograd.grad(ref, inputs)):
            torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_small_eps_grid_is_outside_the_scaling_domain(suite):
    # Its point is to time the log-domain kernels: max C / eps must rule out the scaling form
    # (scaling_safe's bound, 43 in float32, is above the kernels' 30).
    for config in suite.GRIDS["small-eps"]:
        assert not suite.make_problem(config).scaling_safe, config


def test_median_times_a_short_call_until_min_seconds_and_stops_at_max_seconds(suite):
    calls = []
    suite.interleaved_medians_ms({"f": lambda: calls.append(1)}, "cpu", repeats=3,
                                 min_seconds=0.05, warmup=0)
    assert len(calls) > 100  # an empty call takes well under 0.5 ms
    calls.clear()
    suite.interleaved_medians_ms({"f": lambda: calls.append(time.sleep(0.01))}, "cpu",
                                 repeats=1000, max_seconds=0.05, warmup=0)
    assert 3 <= len(calls) <= 10
    calls.clear()
    suite.interleaved_medians_ms({"f": lambda: calls.append(1)}, "cpu", repeats=5, warmup=2)
    assert len(calls) == 7


def test_medians_interleave_the_calls_of_their_functions_in_rounds(suite):
    calls = []
    medians = suite.interleaved_medians_ms(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append(time.sleep(0.001) or "b")},
        "cpu", repeats=10, warmup=0, rounds=5)
    assert calls.count("a") == calls.count("b") == 10
    runs = [name for k, name in enumerate(calls) if k == 0 or calls[k - 1] != name]
    assert runs == ["a", "b"] * 5  # each called in every round, in turn
    assert medians["b"] > 1 > medians["a"]  # ms


def test_pytest_benchmark_suite_runs_the_smoke_grid(suite):
    result = _run("-m", "pytest", "benchmarks", "--sinkhorn-grid", "smoke",
                  "--benchmark-disable", "-q", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    # At least every fused backend and both baselines, in both modes, on every configuration.
    runs = len(suite.GRIDS["smoke"]) * len(suite.MODES) * (len(suite.FUSED_BACKENDS) + 2)
    assert passed >= runs, result.stdout[-3000:]


def test_report_writes_json_plot_and_markdown(tmp_path, suite):
    result = _run("-m", "benchmarks.report", "--grid", "smoke", "--out", str(tmp_path),
                  "--repeats", "1", "--min-seconds", "0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "cpu-smoke-float32.json").read_text())
    assert results["machine"]["versions"]["torch"] == torch.__version__
    configs = suite.GRIDS["smoke"]
    assert [(e["m"], e["d"], e["iters"], e["eps"]) for e in results["configurations"]] == [
        (c.m, c.d, c.iters, c.eps) for c in configs]
    measured = {f"fused-{b}" for b in suite.FUSED_BACKENDS} | {"reference", "scaling-domain"}
    for entry in results["configurations"]:
        assert measured <= set(entry["times_ms"]) and measured <= set(entry["peak_memory_mb"])
    assert {(r["m"], r["backend"]) for r in results["physical_limit"]} == {
        (c.m, b) for c in configs for b in suite.FUSED_BACKENDS}
    assert (tmp_path / "cpu-smoke-float32.png").read_bytes().startswith(b"\x89PNG")
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    for c in configs:
        assert f"| {c.m} | {c.d} | {c.iters} | {c.eps:g} |" in markdown
    assert "Physical limit" in markdown and "cpu-smoke-float32.png" in markdown


def test_targets_table_never_shows_a_missed_speedup_rounded_up_to_its_target(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import report

    path = ROOT / "benchmarks" / "results" / "cpu-targets-float32.json"
    results = json.loads(path.read_text())
    for entry in results["configurations"]:
        if entry["target"] and entry["target"]["speedup"] == 3:  # 2.996x: a miss
            times = entry["times_ms"]
            base = min(times[name]["forward_backward"] for name in ("reference", "scaling-domain"))
            times[f"fused-{entry['auto_backend']}"]["forward_backward"] = base / 2.996
    markdown = "\n".join(report.render_results(results, path.with_suffix(".png"), ROOT))
    (row,) = [line for line in markdown.splitlines() if "≥ 3× (vs" in line]
    assert "| 2.99× | not met |" in row, row


def test_report_on_cuda_without_a_gpu_says_why(suite):
    if suite.cuda_unavailable_reason() is None:
        pytest.skip("a GPU and CUDA kernels are here: the report would run")
    result = _run("-m", "benchmarks.report", "--device", "cuda", "--out", "/nonexistent")
    assert result.returncode == 1 and "--device cuda:" in result.stderr


def test_online_scale_smoke_run_writes_its_result_and_section(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import online_scale

    result = _run("-m", "benchmarks.online_scale", "--m", "300", "--iters", "2", "--out",
                  str(tmp_path))
    assert result.returncode == 0, result.stderr
    (path,) = tmp_path.glob(online_scale.RESULT_PREFIX + "*.json")
    figures = json.loads(path.read_text())
    assert figures["m"] == 300 and figures["gradient_finite"] and figures["total_s"] > 0
    section = "\n".join(online_scale.render(tmp_path))
    assert "online backend at scale" in section and "| 300 | 3 | 2 |" in section
