"""Command-line faults: bad arguments and outputs are refused before any work, in one line."""
import json

import pytest

import stagevar
from stagevar.tools import cli
from stagevar.tools.calibrate import Calibration, calibrate


def _fails_fast(capsys, argv, *needles):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err


def test_bad_counts_and_levels_are_refused_before_work(capsys):
    _fails_fast(capsys, ["bench", "--warmup", "-1"], "--warmup must be at least 0")
    _fails_fast(capsys, ["demo", "--repeats", "0"], "--repeats must be at least 1")
    _fails_fast(capsys, ["demo", "--batch", "0"], "--batch must be at least 1")
    _fails_fast(capsys, ["calibrate", "--alpha", "0.5"], "--alpha 0.5 is not a level calibrate measures")


def test_an_output_that_cannot_be_written_is_refused_before_work(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails_fast(capsys, ["bench", "--shape", "tiny", "--out", str(blocker / "sub")], "cannot create the output folder")
    _fails_fast(capsys, ["calibrate", "--model", "var", "--shape", "tiny", "--out", str(blocker / "c.json")],
                "cannot create the output folder")


def test_demo_creates_the_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "o.png"
    assert cli.main(["demo", "--model", "var", "--shape", "tiny", "--repeats", "1", "--out", str(out)]) == 0
    assert out.exists()


def test_config_takes_every_method_name_bench_takes(tmp_path, capsys):
    """demo/plan --config and bench --methods / generate --config resolve names the same way."""
    assert cli.main(["plan", "--shape", "d16", "--config", "cfg-only"]) == 0
    assert "scale  9 16x16" in capsys.readouterr().out
    out = tmp_path / "d.png"
    assert cli.main(["demo", "--model", "var", "--shape", "tiny", "--repeats", "1", "--config", "fastvar",
                     "skip-last-2", "--out", str(out)]) == 0
    assert "one row per config: fastvar, skip-last-2" in capsys.readouterr().out
    assert cli.main(["demo", "--model", "var", "--shape", "tiny", "--config", "baseline"]) == 1
    assert "always the first row" in capsys.readouterr().err
    assert cli.main(["plan", "--config", "baseline"]) == 1
    assert "it has no plan" in capsys.readouterr().err
    path = tmp_path / "mine.cfg"  # a config file by any name
    stagevar.preset("var-d16").replace(name="mine").save(path)
    assert cli.main(["plan", "--shape", "d16", "--config", str(path)]) == 0
    assert "uncond" in capsys.readouterr().out


def test_other_errors_are_one_line_unless_debug(capsys):
    assert cli.main(["demo", "--model", "var", "--shape", "tiny", "--config", "nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown config 'nope'" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        cli.main(["--debug", "demo", "--model", "var", "--shape", "tiny", "--config", "nope"])


def test_calibrate_refuses_a_zero_batch_and_keeps_the_models_report(tiny):
    with pytest.raises(ValueError, match="batch_size=0"):
        calibrate(tiny, [0, 1], batch_size=0)
    stagevar.accelerate(tiny, "var-d16")
    tiny.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0)
    rep = stagevar.last_report(tiny)
    calibrate(tiny, [0, 1], one_branch_sweep=False)
    assert stagevar.last_report(tiny) is rep and stagevar.current_config(tiny).name == "var-d16"


def test_calibration_load_names_unknown_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"schedule": [], "bogus": 1}))
    with pytest.raises(ValueError, match=r"not a stagevar calibration \(unknown keys \['bogus'\]\)"):
        Calibration.load(path)


def test_calibrate_uses_the_prompts_of_any_text_model_and_refuses_the_wrong_kind(tmp_path, capsys):
    """--prompts reached only Infinity: STAR calibrated on eight built-in prompts instead of the given ones."""
    out = str(tmp_path / "c.json")
    assert cli.main(["calibrate", "--model", "star", "--shape", "tiny", "--prompts", "a cat", "a dog", "a boat",
                     "--no-sweep", "--out", out]) == 0
    assert "3 conditions x 1 seeds" in capsys.readouterr().out
    assert json.load(open(out))["num_conditions"] == 3
    assert cli.main(["calibrate", "--model", "var", "--shape", "tiny", "--prompts", "a cat", "--out", out]) == 1
    assert "--model var takes class labels (--conditions), not --prompts" in capsys.readouterr().err
    assert cli.main(["calibrate", "--model", "star", "--shape", "tiny", "--conditions", "1", "--out", out]) == 1
    assert "--model star takes prompts (--prompts), not --conditions" in capsys.readouterr().err
