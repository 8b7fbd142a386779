"""The GPU check (benchmarks/gpu.sh) works before a GPU is lent: its dry run checks every step here,
and its summary turns the measured rows into PASS / FAIL / not measured."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_summary  # noqa: E402


@pytest.mark.slow
def test_gpu_check_dry_run_checks_every_step_and_exits_zero(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("environment: torch ") and "graph-safe generators" in out
    assert out.count("arguments and imports ok") == 8 and "dry run: collects" in out  # 8 benchmark steps (HART last)
    assert "dry run: exact_var, exact_infinity" in out  # the plain CUDA checks, listed
    assert "not measured VAR-d16 B=1" in out and "every step's imports and arguments ok" in out
    assert (tmp_path / "log.txt").read_text() == out  # the log keeps what was printed


def _row(method, execution, ms, exact=None, **extra):
    return dict(method=method, execution=execution, e2e_ms=ms, exact=exact, **extra)


def test_gpu_summary_computes_each_target_from_the_rows(tmp_path):
    (tmp_path / "var_d16_b1.json").write_text(json.dumps([dict(batch=1, rows=[
        _row("unpatched", "eager", 300.0), _row("none (loop overhead)", "graphs", 90.0, exact=True)])]))
    (tmp_path / "inf_2b_b1.json").write_text(json.dumps(dict(rows=[
        _row("unpatched", "eager", 1200.0), _row("none", "graphs", 500.0),
        _row("infinity-2b", "graphs", 260.0, pool_mib=3000.0), _row("infinity-2b", "eager", 600.0, peak_mib=2500.0)])))
    (tmp_path / "inf_2b_real_use.json").write_text(json.dumps(dict(rows=[
        _row("infinity-2b", "eager", 700.0, prompts="varied"), _row("infinity-2b", "eager", 690.0, prompts="fixed"),
        _row("infinity-2b", "graphs", 280.0, prompts="varied", replayed=20, calls=24, buckets=[32, 64]),
        _row("infinity-2b", "graphs", 260.0, prompts="fixed", replayed=8, calls=8, buckets=[32])])))
    (tmp_path / "checks.json").write_text(json.dumps([dict(check="a", verdict="PASS"), dict(check="b", verdict="FAIL")]))
    (tmp_path / "var_d16_b8_64.json").write_text(json.dumps([dict(batch=8, rows=[]), dict(batch=64, rows=[
        _row("var-d16", "graphs", 100.0), _row("none (loop overhead)", "graphs", 150.0)])]))
    got = {target: (figure, passed) for target, figure, passed in gpu_summary.checks(str(tmp_path))}
    by = {t.split(": ", 1)[1]: v for t, v in got.items()}
    assert by["graphed none bit-identical to eager and >= 3x the unpatched call"] == ("3.33x, exact=True", True)
    assert by["graphed infinity-2b <= 0.25 s per image"] == ("0.260 s", False)
    assert by["graphed infinity-2b >= 4x the unpatched call"] == ("4.62x", True)
    assert by["graphed infinity-2b >= 2x graphed none"] == ("1.92x", False)
    assert by["graphed var-d16 >= 1.6x graphed none"] == ("1.50x", False)
    assert by["graph pool <= 1.5x the eager call's peak allocated memory"] == (
        "pool 3000 MiB / eager peak 2500 MiB = 1.20", True)
    assert by["graphed infinity-2b within 10% of the fixed prompt's call"] == (
        "varied/fixed 1.077 (20 of 24 replayed, buckets [32, 64])", True)
    assert by["graphed infinity-2b >= 2x eager infinity-2b"] == ("2.50x", True)
    (tmp_path / "var_d16_b8_64.json").unlink()
    assert gpu_summary.checks(str(tmp_path))[-1][1:] == (None, None)  # not measured


def test_gpu_summary_prints_the_checks_line(tmp_path, capsys):
    (tmp_path / "checks.json").write_text(json.dumps([dict(check="a", verdict="PASS"), dict(check="b", verdict="FAIL")]))
    gpu_summary.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "FAIL         CUDA checks: 1 of 2 passed (failed: b)" in out
    assert "not measured Infinity-2B 1024^2 B=1: graph pool" in out
