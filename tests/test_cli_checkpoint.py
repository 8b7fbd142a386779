"""--model pretrained --checkpoint PATH: the tools on a checkpoint of the user's own (save_pretrained)."""
import os

import pytest
import torch

from stagevar.tools import cli
from stagevar.models import build_reference, load_pretrained, reference_var, save_pretrained
from stagevar.models.pretrained import BUNDLED, class_names_of
from stagevar.tools.quality import bundled_judges

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
