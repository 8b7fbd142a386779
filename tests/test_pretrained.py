"""Checkpoints: save/load round trip, local paths, Hub ids failing clearly offline."""
import pytest
import torch

from stagevar.models import load_pretrained, reference_var, save_pretrained


def test_round_trip_local_file_and_folder(tmp_path):
    cfg = dict(depth=2, embed_dim=64, num_heads=4, patch_nums=[1, 2, 3], vocab_size=32, z_channels=8, ch=16,
               num_down=2, num_classes=3, seed=5)
    var = reference_var("tiny", **cfg)
    names = ["astronaut", "coffee", "chelsea"]
    save_pretrained(var, str(tmp_path / "model.safetensors"), names, cfg)
    for where in [tmp_path / "model.safetensors", tmp_path]:
        got = load_pretrained(str(where))
        assert got.class_names == names and got.patch_nums == (1, 2, 3)
        kw = dict(B=2, label_B=torch.tensor([0, 2]), g_seed=3, cfg=2.0)
        assert torch.equal(got.autoregressive_infer_cfg(**kw), var.autoregressive_infer_cfg(**kw))


def test_fp16_storage_loads_as_fp32(tmp_path):
    cfg = dict(num_classes=2)
    var = reference_var("tiny", **cfg)
    save_pretrained(var, str(tmp_path / "m.safetensors"), ["a", "b"], cfg, dtype=torch.float16)
    got = load_pretrained(str(tmp_path / "m.safetensors"))
    assert got.head.weight.dtype == torch.float32
    torch.testing.assert_close(got.head.weight, var.head.weight, atol=1e-3, rtol=1e-3)


def test_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not fetch model.safetensors of Hugging Face Hub repo 'someone/some-var'"):
        load_pretrained("someone/some-var")
    with pytest.raises(FileNotFoundError, match="neither a bundled checkpoint"):
        load_pretrained(str(tmp_path / "missing" / "x.safetensors"))
    with pytest.raises(ValueError, match="class names for a model with"):
        save_pretrained(reference_var("tiny"), str(tmp_path / "x.safetensors"), ["one"], {})
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a stagevar checkpoint"):
        load_pretrained(str(tmp_path / "other.safetensors"))


def test_bundled_model_generates_its_classes():
    """The shipped weights and classifier: most samples are recognised as the class asked for."""
    from stagevar.models.pretrained import BUNDLED_CLASSIFIERS
    from stagevar.quality import load_classifier

    var = load_pretrained("stagevar-tiny-var")
    assert len(var.class_names) == var.num_classes == 12 and var.class_names[0] == "astronaut"
    clf = load_classifier(BUNDLED_CLASSIFIERS["stagevar-tiny-var"], 12)
    labels = torch.arange(12).repeat(2)
    img = var.autoregressive_infer_cfg(B=24, label_B=labels, g_seed=0, cfg=4.0, top_p=0.95)
    with torch.no_grad():
        consistency = (clf(img).argmax(-1) == labels).float().mean().item()
    assert consistency >= 0.6  # 0.94 over 96 samples when measured; random weights give ~1/12


def test_bundled_model_preset_cuts_only_the_last_scale_to_the_conditional_rows():
    import stagevar

    var = load_pretrained("stagevar-tiny-var")
    labels = torch.tensor([3, 7])
    kw = dict(B=2, label_B=labels, g_seed=5, cfg=4.0, top_p=0.95)
    with stagevar.accelerated(var, "stagevar-tiny-var"):
        img = var.autoregressive_infer_cfg(**kw)
        rep = stagevar.report(var)
    assert [s.mode for s in rep.scales] == ["intact"] * 8 + ["cond-only"]
    assert rep.scales[-1].rows == 2 and rep.scales[-2].rows == 4
    base = var.autoregressive_infer_cfg(**kw)
    assert img.shape == base.shape and not torch.equal(img, base)
