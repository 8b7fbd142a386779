"""stagevar calibrate --write-into CKPT: the calibrated model's checkpoint, written with the
recommended config in its metadata; an existing file is replaced only by a complete one."""
import os
import shutil

import pytest
import safetensors.torch
import torch

from stagevar import StageVARConfig, preset
from stagevar.tools import cli
from stagevar.tools.calibrate import Calibration
from stagevar.models import load_pretrained, reference_var, save_pretrained
from stagevar.models.pretrained import BUNDLED, write_config_into

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
