"""The command line: argument faults refused before any work, one-line errors, --checkpoint, calibrate --write-into."""
import json
import os
import shutil

import pytest
import safetensors.torch
import torch

import stagevar
from stagevar import StageVARConfig, preset
from stagevar.models import build_reference, load_pretrained, reference_var, save_pretrained
from stagevar.models.pretrained import BUNDLED, class_names_of, write_config_into
from stagevar.tools import cli
from stagevar.tools.calibrate import Calibration, calibrate
from stagevar.tools.quality import bundled_judges


# ------------------------------------------------------------------------------------------
# Command-line faults: bad arguments and outputs are refused before any work, in one line.
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


@pytest.mark.parametrize("argv, needle", [
    (["bench", "--top-k", "-1"], "--top-k must be at least 0, got -1"),
    (["demo", "--top-p", "1.5"], "--top-p must be 0 (off) to 1, got 1.5"),
    (["generate", "--top-p", "-0.1"], "--top-p must be 0 (off) to 1"),
    (["bench", "--cfg", "-2"], "--cfg must be 0 or more, got -2.0"),
    (["demo", "--cfg", "nan"], "--cfg must be 0 or more, got nan"),
    (["calibrate", "--max-rank-ratio", "0"], "--max-rank-ratio must be above 0 and at most 1, got 0.0"),
    (["calibrate", "--max-rank-ratio", "1.2"], "--max-rank-ratio must be above 0 and at most 1"),
    (["calibrate", "--unit-blocks", "0"], "--unit-blocks must be at least 1, got 0"),
    (["calibrate", "--conditions", "1", "-3"], "--conditions takes class indices (0 or more), got [-3]"),
    (["generate", "--classes", "-1"], "--classes takes class indices (0 or more), got [-1]"),
])
def test_sampling_and_calibration_options_out_of_range_are_refused_before_work(capsys, argv, needle):
    _fails_fast(capsys, argv, needle)


def test_an_output_that_cannot_be_written_is_refused_before_work(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _fails_fast(capsys, ["bench", "--shape", "tiny", "--out", str(blocker / "sub")], "cannot create the output folder")
    _fails_fast(capsys, ["calibrate", "--model", "var", "--shape", "tiny", "--out", str(blocker / "c.json")],
                "cannot create the output folder")


def test_plan_names_the_shapes_it_knows(capsys):
    _fails_fast(capsys, ["plan", "--shape", "d99"], "argument --shape: invalid choice: 'd99'", "'d16'", "'d30'")


def test_the_demos_seed_reaches_the_generation_call(monkeypatch, tmp_path, capsys):
    """--seed is the call's g_seed (0 when not given), not only a word in the figure's title."""
    from stagevar.tools import demo as demo_mod

    seen = []

    def fake_demo(model, configs, call_kwargs, conditions, **kw):
        seen.append((call_kwargs["g_seed"], kw["title"]))
        raise SystemExit(0)  # the call was all this test needed

    monkeypatch.setattr(demo_mod, "demo", fake_demo)
    for argv, seed in (([], 0), (["--seed", "7"], 7)):
        with pytest.raises(SystemExit):
            cli.main(["demo", "--model", "var", "--shape", "tiny", "--out", str(tmp_path / "o.png"), *argv])
        assert seen[-1][0] == seed and f"seed {seed}," in seen[-1][1]


def test_generate_builds_the_given_shape_and_by_default_every_class_or_four_prompts(monkeypatch, tmp_path, capsys):
    """--shape reaches the model that is built (not the tool's default shape); with no --classes or
    prompts, generate draws every class of a class-conditional model, four built-in prompts of a text one."""
    import stagevar.models
    from stagevar.adapters.base import DEFAULT_PROMPTS
    from stagevar.tools import generate as generate_mod

    built, called = [], []
    real = stagevar.models.build_reference

    def recorded_build(name, shape=None, **kw):
        built.append((name, shape))
        assert shape == "tiny", f"built the {shape!r} shape, not the one given"
        return real(name, shape, **kw)

    def fake_generate(model, items, out, **kw):
        called.append((model, list(items)))
        return generate_mod.GenerateResult(manifest=str(tmp_path / "m.json"), ran=[], skipped=[])

    monkeypatch.setattr(stagevar.models, "build_reference", recorded_build)
    monkeypatch.setattr(generate_mod, "generate", fake_generate)
    for name in ("var", "infinity"):
        assert cli.main(["generate", "--model", name, "--shape", "tiny", "--out", str(tmp_path / name), "--quiet"]) == 0
        assert built[-1] == (name, "tiny")
    (var, classes), (_, prompts) = called
    assert var.num_classes != 4 and classes == list(range(var.num_classes))
    assert prompts == list(DEFAULT_PROMPTS[:4]) and len(set(prompts)) == 4


def test_every_option_of_every_command_says_what_it_does():
    """--help explains each option: none is listed bare."""
    import argparse

    def bare(parser, where):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                yield from (b for name, p in a.choices.items() for b in bare(p, f"{where} {name}"))
            elif not (a.help or "").strip():
                yield f"{where} {'/'.join(a.option_strings) or a.dest}"

    assert list(bare(cli.build_parser(), "stagevar")) == []


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


def test_config_names_are_refused_before_the_model_is_built(monkeypatch, capsys, tmp_path):
    import stagevar.models as models

    monkeypatch.setattr(models, "build_reference", lambda *a, **k: pytest.fail("the model was built"))
    out = str(tmp_path / "o")
    for argv, needle in ((["demo", "--config", "var-d16", "nope"], "unknown config 'nope'"),
                         (["demo", "--config", "baseline"], "the unpatched model is always the first row"),
                         (["bench", "--methods", "baseline", "fastvr", "--out", out], "did you mean 'fastvar'"),
                         (["generate", "--config", "mine.json", "--out", out], "'mine.json': no such config file")):
        assert cli.main(argv) == 1, argv
        assert needle in capsys.readouterr().err, argv


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



# ------------------------------------------------------------------------------------------
# --model pretrained --checkpoint PATH: the tools on a checkpoint of the user's own (save_pretrained).
CFG = dict(depth=2, embed_dim=64, num_heads=4, patch_nums=[1, 2, 3, 4], vocab_size=32, z_channels=8, ch=16,
           num_down=2, num_classes=3, seed=7)
NAMES = ["cat", "dog", "bird"]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "mine.safetensors"
    save_pretrained(reference_var("tiny", **CFG), str(path), NAMES, CFG)
    return path


def test_build_reference_loads_the_named_checkpoint(ckpt):
    ref = build_reference("pretrained", checkpoint=str(ckpt))
    assert ref.model.class_names == NAMES and str(ckpt) in ref.description
    want = load_pretrained(str(ckpt)).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in ref.model.state_dict().items())
    with pytest.raises(ValueError, match="random weights and loads no checkpoint"):
        build_reference("var", "tiny", checkpoint=str(ckpt))


def test_demo_and_bench_run_on_the_users_checkpoint(ckpt, tmp_path, capsys):
    assert cli.main(["demo", "--model", "pretrained", "--checkpoint", str(ckpt), "--repeats", "1",
                     "--out", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert f"trained VAR '{ckpt}'" in out and "classes: cat, dog, bird" in out
    assert "class consistency" not in out  # the bundled judges know other classes
    assert cli.main(["bench", "--model", "pretrained", "--checkpoint", str(ckpt), "--methods", "var-d16",
                     "--rounds", "1", "--quiet", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert f"trained VAR '{ckpt}'" in out and "var-d16" in out  # the report's title names the benched model


def test_calibrate_writes_into_the_users_checkpoint_in_place(ckpt, tmp_path):
    assert getattr(load_pretrained(str(ckpt)), "stagevar_config", None) is None
    assert cli.main(["calibrate", "--model", "pretrained", "--checkpoint", str(ckpt), "--conditions", "0", "1",
                     "--seeds", "0", "--no-sweep", "--out", str(tmp_path / "cal.json"), "--write-into", str(ckpt)]) == 0
    assert load_pretrained(str(ckpt)).stagevar_config is not None


def test_checkpoint_faults_are_refused_before_work(ckpt, tmp_path, capsys):
    for argv, needle in [
        (["demo", "--model", "var", "--checkpoint", str(ckpt)], "use it with --model pretrained"),
        (["bench", "--model", "pretrained", "--checkpoint", str(tmp_path / "absent.safetensors")], "--checkpoint: "),
    ]:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert needle in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists(BUNDLED["stagevar-tiny-var"]), reason="bundled model not installed")
def test_bundled_judges_only_for_the_bundled_classes(ckpt):
    assert bundled_judges(load_pretrained(str(ckpt))) == {}
    bundled = load_pretrained("stagevar-tiny-var")
    assert class_names_of(BUNDLED["stagevar-tiny-var"]) == bundled.class_names
    assert set(bundled_judges(bundled)) == {"semantic", "texture"}



# ------------------------------------------------------------------------------------------
# stagevar calibrate --write-into CKPT: the calibrated model's checkpoint, written with the
pytestmark = pytest.mark.skipif(not os.path.exists(BUNDLED["stagevar-tiny-var"]), reason="bundled model not installed")


def _calibrate(tmp_path, ckpt, *extra):
    return cli.main(["calibrate", "--model", "pretrained", "--conditions", "0", "1", "--seeds", "0", "--no-sweep",
                     "--out", str(tmp_path / "cal.json"), "--config-out", str(tmp_path / "cfg.json"),
                     "--write-into", str(ckpt), *extra])


def _recommended(tmp_path):
    cfg = StageVARConfig.load(tmp_path / "cfg.json")
    assert cfg == Calibration.load(tmp_path / "cal.json").recommend(alpha=0.96, max_rank_ratio=0.3, branch="uncond")
    return cfg


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_new_path_gets_the_checkpoint_with_the_recommended_config(tmp_path):
    ckpt = tmp_path / "new" / "calibrated.safetensors"
    assert _calibrate(tmp_path, ckpt) == 0
    model = load_pretrained(str(ckpt))
    assert model.stagevar_config == _recommended(tmp_path)
    assert _same_weights(model, load_pretrained("stagevar-tiny-var"))


def test_an_existing_copy_has_its_config_replaced(tmp_path):
    ckpt = tmp_path / "copy.safetensors"
    write_config_into(BUNDLED["stagevar-tiny-var"], preset("var-d16"), out=str(ckpt))
    assert _calibrate(tmp_path, ckpt) == 0
    assert load_pretrained(str(ckpt)).stagevar_config == _recommended(tmp_path) != preset("var-d16")


def test_a_failed_save_leaves_the_old_file_intact_and_no_new_one(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "copy.safetensors"
    shutil.copy(BUNDLED["stagevar-tiny-var"], ckpt)
    before = ckpt.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    assert _calibrate(tmp_path, ckpt) == 1
    assert "disk full" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
    assert _calibrate(tmp_path, tmp_path / "new.safetensors") == 1
    assert sorted(os.listdir(tmp_path)) == ["cal.json", "cfg.json", "copy.safetensors"]  # no partial or temporary file


def test_other_weights_and_models_without_a_checkpoint_are_refused_before_work(tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    config = dict(num_classes=2, seed=1)
    save_pretrained(reference_var("tiny", **config), str(other), ["a", "b"], config)
    before = other.read_bytes()
    with pytest.raises(SystemExit, match="2"):  # an argument fault, like argparse's
        _calibrate(tmp_path, other)
    assert "holds other weights than the calibrated model" in capsys.readouterr().err
    assert other.read_bytes() == before and not (tmp_path / "cal.json").exists()  # refused before calibrating
    with pytest.raises(SystemExit, match="2"):
        cli.main(["calibrate", "--model", "var", "--shape", "tiny", "--out", str(tmp_path / "c.json"),
                  "--write-into", str(tmp_path / "x.safetensors")])
    assert "has random weights and no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "c.json").exists()


def test_the_installed_checkpoint_is_never_written(tmp_path, capsys):
    from stagevar.models.pretrained import BUNDLED

    before = open(BUNDLED["stagevar-tiny-var"], "rb").read()
    with pytest.raises(SystemExit, match="2"):
        _calibrate(tmp_path, BUNDLED["stagevar-tiny-var"])
    assert "is the bundled checkpoint installed with stagevar" in capsys.readouterr().err
    assert open(BUNDLED["stagevar-tiny-var"], "rb").read() == before


@pytest.mark.parametrize("flag", ["--out", "--config-out", "--plot"])
def test_calibrate_refuses_a_folder_as_an_output_file_before_work(tmp_path, capsys, monkeypatch, flag):
    """calibrate --out DIR ran the whole calibration, then lost its output."""
    import stagevar.tools.calibrate as tool

    monkeypatch.setattr(tool, "calibrate", lambda *a, **k: pytest.fail("calibrated before refusing"))
    args = ["calibrate", "--shape", "tiny", "--out", str(tmp_path / "c.json"), flag, str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2 and f"{flag} {tmp_path} is a folder; give the path of the file to write" in \
        capsys.readouterr().err
