"""Checkpoints: save/load round trip, local paths, Hub ids failing clearly offline, and damaged or
inconsistent files refused with errors that name the path, what is wrong and what to do."""
import json
import re
import resource
import time
from pathlib import Path

import pytest
import torch

import stagevar.models
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
    with pytest.raises(FileNotFoundError, match="no such file or folder: .*missing"):
        load_pretrained(str(tmp_path / "missing" / "x.safetensors"))
    # a relative path of one folder and a file looks like 'owner/name': it was sent to the Hub
    monkeypatch.chdir(tmp_path)
    for local in ("ckpts/model.safetensors", "./mine", "~/mine"):
        with pytest.raises(FileNotFoundError, match=f"no such file or folder: '{local}' \\(a local path"):
            load_pretrained(local)
    (tmp_path / "ckpts").mkdir()
    with pytest.raises(FileNotFoundError, match="no such file or folder: 'ckpts/mine'"):
        load_pretrained("ckpts/mine")  # its first part is a local folder
    with pytest.raises(FileNotFoundError, match="neither a bundled checkpoint"):
        load_pretrained("not-a-name")
    with pytest.raises(ValueError, match="class names for a model with"):
        save_pretrained(reference_var("tiny"), str(tmp_path / "x.safetensors"), ["one"], {})
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a stagevar checkpoint"):
        load_pretrained(str(tmp_path / "other.safetensors"))


def test_bundled_model_generates_its_classes():
    """The shipped weights and classifier: most samples are recognised as the class asked for."""
    from stagevar.models.pretrained import BUNDLED_CLASSIFIERS
    from stagevar.tools.quality import load_classifier

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
        rep = stagevar.last_report(var)
    assert [s.mode for s in rep.scales] == ["intact"] * 8 + ["cond-only"]
    assert rep.scales[-1].rows == 2 and rep.scales[-2].rows == 4
    base = var.autoregressive_infer_cfg(**kw)
    assert img.shape == base.shape and not torch.equal(img, base)


# ----------------------------------------------------------------- damaged or inconsistent files
CFG = dict(depth=2, embed_dim=64, num_heads=4, patch_nums=[1, 2, 3], vocab_size=32, z_channels=8, ch=16, num_down=2,
           num_classes=3)
NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid checkpoint of a small model: (path, its tensors, its metadata)."""
    from safetensors import safe_open

    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_pretrained(reference_var("tiny", **CFG), str(path), NAMES, CFG)
    with safe_open(str(path), framework="pt") as f:
        return path, {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def write(path, tensors, meta):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)
    return str(path)


def with_config(good, tmp_path, **changes):
    _, tensors, meta = good
    return write(tmp_path / "edited.safetensors", tensors, {**meta, "config": json.dumps({**CFG, **changes})})


def refused(path, *patterns, error=ValueError):
    """load_pretrained(path) raises ``error`` whose message names ``path`` and matches every pattern."""
    with pytest.raises(error) as e:
        load_pretrained(path)
    assert str(path) in str(e.value)
    for p in patterns:
        assert re.search(p, str(e.value)), (p, str(e.value))
    return str(e.value)


@pytest.mark.parametrize("field, value", [
    ("depth", 10 ** 6), ("embed_dim", 10 ** 9), ("num_classes", 10 ** 9), ("vocab_size", 10 ** 9),
    ("z_channels", 10 ** 8), ("ch", 10 ** 7), ("num_down", 10 ** 6), ("patch_nums", [1, 2, 3, 10 ** 5]),
    ("mlp_ratio", 1e6), ("attn_l2_norm", False), ("shared_aln", True),
])
def test_absurd_metadata_is_refused_before_any_module_is_built(good, tmp_path, monkeypatch, field, value):
    path = with_config(good, tmp_path, **{field: value})

    def no_build(*a, **k):
        pytest.fail(f"load_pretrained built a model from metadata {field}={value!r} that the file contradicts")

    monkeypatch.setattr(stagevar.models, "reference_var", no_build)
    rss0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    msg = refused(path, rf"config {field}={re.escape(repr(value))} does not match the weights", "re-download")
    assert time.perf_counter() - t0 < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 512 * 1024  # KiB on Linux: < 512 MiB
    assert "tensor" in msg or "blocks" in msg or "layers" in msg  # says which evidence in the file disagrees


def test_a_flag_the_weights_contradict_names_the_tensor_that_shows_it(good, tmp_path):
    """shared_aln adds a block's ada_gss, attn_l2_norm its scale_mul_1H11: the refusal names the tensor."""
    refused(with_config(good, tmp_path, shared_aln=True), r"tensor 'var\.blocks\.0\.ada_gss' is missing")
    refused(with_config(good, tmp_path, attn_l2_norm=False), r"tensor 'var\.blocks\.0\.attn\.scale_mul_1H11' is present")


def test_metadata_of_the_wrong_type_names_the_field(good, tmp_path):
    refused(with_config(good, tmp_path, depth="2"), r"depth='2' must be a positive integer")
    refused(with_config(good, tmp_path, num_heads=5), r"num_heads=5 must be a divisor of embed_dim=64")
    refused(with_config(good, tmp_path, patch_nums=[]), r"patch_nums=\[\] must be a non-empty list")
    refused(with_config(good, tmp_path, mlp_ratio=float("nan")), r"mlp_ratio=nan must be a positive number")
    refused(with_config(good, tmp_path, dept=2), r"unknown reference_var override\(s\) \['dept'\]")


def test_truncated_file_says_it_was_cut_short(good, tmp_path):
    data = good[0].read_bytes()
    n = int.from_bytes(data[:8], "little")  # the header's length; the tensor data follows it
    (tmp_path / "cut.safetensors").write_bytes(data[:-1000])
    refused(str(tmp_path / "cut.safetensors"), "cut short", "interrupted download or copy", "re-download",
            f"lists {len(data) - 8 - n} bytes of tensor data but only {len(data) - 8 - n - 1000} follow")
    (tmp_path / "cut_header.safetensors").write_bytes(data[:100])
    refused(str(tmp_path / "cut_header.safetensors"), f"cut short: its header alone should be {n} bytes but only 92 "
            "follow", "re-download")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    refused(str(tmp_path / "empty.safetensors"), "0 bytes, too short .* truncated or empty", "re-download")


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_renamed_safetensors_asks_about_torch_save(tmp_path, zip_format):
    path = tmp_path / "model.safetensors"
    torch.save(reference_var("tiny", **CFG).state_dict(), path, _use_new_zipfile_serialization=zip_format)
    refused(str(path), "not a safetensors file", r"Was it saved with torch.save\?", "save_pretrained")


def test_missing_metadata_keys_name_the_key_and_the_writer(good, tmp_path):
    _, tensors, meta = good
    for key in ("config", "class_names"):
        path = write(tmp_path / f"no_{key}.safetensors", tensors, {k: v for k, v in meta.items() if k != key})
        refused(path, f"lacks stagevar metadata key '{key}'; it was not written by stagevar's save_pretrained "
                      f"/ examples/train_reference.py")
    path = write(tmp_path / "no_meta.safetensors", tensors, None)
    refused(path, "is not a stagevar checkpoint .*no stagevar metadata key 'format'", "save_pretrained")
    path = write(tmp_path / "bad_json.safetensors", tensors, {**meta, "config": "{depth: 2"})
    refused(path, "metadata key 'config' that is not valid JSON", "re-download")
    path = write(tmp_path / "names.safetensors", tensors, {**meta, "class_names": json.dumps(["a", "b"])})
    refused(path, r"'class_names' must be a list of 3 strings")


def test_tensors_that_do_not_fit_are_named(good, tmp_path):
    _, tensors, meta = good
    missing = write(tmp_path / "missing.safetensors", {k: v for k, v in tensors.items() if k != "var.head.weight"}, meta)
    refused(missing, "tensor 'var.head.weight', which every stagevar VAR checkpoint holds, is missing")
    odd = dict(tensors)
    odd["var.blocks.1.ffn.fc2.weight"] = torch.zeros(64, 3)  # a shape no size check looks at
    refused(write(tmp_path / "odd.safetensors", odd, meta), "tensors do not fit the model its metadata describes",
            "ffn.fc2.weight", "re-download")


def test_name_that_is_not_a_string_or_path_says_what_to_give(good):
    for bad in (None, 3, b"model.safetensors"):
        with pytest.raises(TypeError, match=r"takes a checkpoint name or path: a bundled name \(stagevar-tiny-var\), "
                                            r"a local .safetensors file or folder, or a Hugging Face Hub repo id"):
            load_pretrained(bad)
    assert load_pretrained(Path(good[0])).class_names == NAMES  # a pathlib.Path is a path


def test_save_refuses_a_config_that_does_not_describe_the_model(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=r"save_pretrained: config depth=2 does not match the weights: "
                                         r"the weights hold 3 blocks.*overrides the model was built with"):
        save_pretrained(reference_var("tiny", depth=3), str(path), [str(i) for i in range(10)], {})
    assert not path.exists()


# -- checkpoints that carry their calibrated config ---------------------------------------------
def test_the_bundled_checkpoint_carries_its_config_and_accelerate_uses_it():
    import stagevar

    var = load_pretrained("stagevar-tiny-var")
    assert var.stagevar_config == stagevar.preset("stagevar-tiny-var")
    stagevar.accelerate(var)
    var.autoregressive_infer_cfg(B=1, label_B=torch.tensor([0]), g_seed=0)
    rep = stagevar.last_report(var)
    assert rep.config_name == "stagevar-tiny-var" and "checkpoint" in rep.config_source
    stagevar.accelerate(var, "none")  # an explicit config wins
    var.autoregressive_infer_cfg(B=1, label_B=torch.tensor([0]), g_seed=0)
    assert stagevar.last_report(var).config_source == "given"
    del var.stagevar_config
    stagevar.restore(var)
    stagevar.accelerate(var)
    assert stagevar.current_config(var).name == "var-d16"  # no carried config: the family default


def test_write_config_into_a_new_file_or_atomically_in_place(tmp_path, monkeypatch):
    import stagevar
    import stagevar.models.pretrained as pretrained

    cfg = stagevar.StageVARConfig(refine_start=-2, branch="uncond", rank_ratio=0.2, name="mine")
    src = tmp_path / "a.safetensors"
    save_pretrained(reference_var("tiny", num_classes=3), str(src), ["x", "y", "z"], dict(num_classes=3))
    before = src.read_bytes()
    out = pretrained.write_config_into(str(src), cfg, out=str(tmp_path / "b.safetensors"))
    assert src.read_bytes() == before and load_pretrained(out).stagevar_config == cfg
    assert not hasattr(load_pretrained(str(src)), "stagevar_config")

    def dies(tensors, path, metadata=None):  # the writer fails half way
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", dies)
    with pytest.raises(OSError, match="disk full"):
        pretrained.write_config_into(str(src), cfg)
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_an_invalid_carried_config_is_named(good, tmp_path):
    _, tensors, meta = good
    path = write(tmp_path / "cfg.safetensors", tensors, {**meta, "stagevar_config": json.dumps({"branch": "sideways"})})
    refused(path, "'stagevar_config' is not a valid StageVARConfig", "branch='sideways'")
