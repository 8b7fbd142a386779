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
    assert out.count("arguments and imports ok") == 6 and "dry run: collects" in out
    assert "not measured VAR-d16 B=1" in out and "every step's imports and arguments ok" in out
    assert (tmp_path / "log.txt").read_text() == out  # the log keeps what was printed


def _row(method, execution, ms, exact=None):
    return dict(method=method, execution=execution, e2e_ms=ms, exact=exact)


def test_gpu_summary_computes_each_target_from_the_rows(tmp_path):
    (tmp_path / "var_d16_b1.json").write_text(json.dumps([dict(batch=1, rows=[
        _row("unpatched", "eager", 300.0), _row("none (loop overhead)", "graphs", 90.0, exact=True)])]))
    (tmp_path / "inf_2b_b1.json").write_text(json.dumps(dict(rows=[
        _row("unpatched", "eager", 1200.0), _row("none", "graphs", 500.0), _row("infinity-2b", "graphs", 260.0)])))
    (tmp_path / "var_d16_b8_64.json").write_text(json.dumps([dict(batch=8, rows=[]), dict(batch=64, rows=[
        _row("var-d16", "graphs", 100.0), _row("none (loop overhead)", "graphs", 150.0)])]))
    got = {target: (figure, passed) for target, figure, passed in gpu_summary.checks(str(tmp_path))}
    by = {t.split(": ", 1)[1]: v for t, v in got.items()}
    assert by["graphed none bit-identical to eager and >= 3x the unpatched call"] == ("3.33x, exact=True", True)
    assert by["graphed infinity-2b <= 0.25 s per image"] == ("0.260 s", False)
    assert by["graphed infinity-2b >= 4x the unpatched call"] == ("4.62x", True)
    assert by["graphed infinity-2b >= 2x graphed none"] == ("1.92x", False)
    assert by["graphed var-d16 >= 1.6x graphed none"] == ("1.50x", False)
    (tmp_path / "var_d16_b8_64.json").unlink()
    assert gpu_summary.checks(str(tmp_path))[-1][1:] == (None, None)  # not measured
