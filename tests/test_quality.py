"""Quality: the classifiers, and the evaluation loop in its two views on tiny models of each family."""
import importlib.util
import os

import pytest
import torch

import stagevar
from stagevar import StageVARConfig
from stagevar.models import build_reference, reference_var
from stagevar.tools.quality import CropClassifier, evaluate, format_rows, load_classifier, save_classifier, train_classifier
from stagevar.tools.runner import BASELINE

LOWRANK = StageVARConfig(refine_start=-2, rank_ratio=0.3, name="t")
SEMANTIC = ("semantic_consistency", "semantic_consistency_change", "semantic_change_se", "semantic_fd_to_baseline")
TEXTURE = ("class_consistency", "consistency_change", "change_se", "lost", "gained")


def test_classifier_learns_colours():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.rand(300, 3, 16, 16, generator=g) * 0.3
    x[torch.arange(300), y] += 0.6  # class = dominant channel
    clf = train_classifier(x, y, 3, steps=150, seed=0)
    with torch.no_grad():
        assert (clf(x).argmax(-1) == y).float().mean() > 0.9


def test_low_band_classifier_sees_block_means_only(tmp_path):
    torch.manual_seed(0)
    clf = CropClassifier(4, width=8, downsample=4).eval()
    path = str(tmp_path / "clf.safetensors")
    save_classifier(clf, path)
    back = load_classifier(path, 4)
    assert back.downsample == 4 and back.fc.in_features == 32
    img = torch.rand(2, 3, 16, 16)
    detail = torch.rand(2, 3, 16, 16) - 0.5
    detail = detail - detail.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).repeat_interleave(4, 2).repeat_interleave(4, 3)
    with torch.no_grad():  # detail with zero mean in every 4x4 block changes nothing it sees
        assert torch.allclose(back(img), clf(img)) and torch.allclose(back(img + 0.1 * detail), back(img), atol=1e-5)
        assert not torch.allclose(CropClassifier(4, width=8).eval()(img + 0.1 * detail),
                                  CropClassifier(4, width=8).eval()(img), atol=1e-5)


def _judges(num_classes):
    torch.manual_seed(0)
    return CropClassifier(num_classes).eval(), CropClassifier(num_classes, downsample=2).eval()


def test_evaluate_var_gives_both_views():
    var = reference_var("tiny")
    clf, sem = _judges(var.num_classes)
    rows = evaluate(var, [("baseline", BASELINE), ("t", LOWRANK)], classifier=clf, semantic_classifier=sem, per_class=1,
                    cfg=2.0)
    base, t = rows
    assert [r["method"] for r in rows] == ["baseline", "t"] and base["n"] == var.num_classes
    assert all(base[k] is not None and t[k] is not None for k in SEMANTIC + TEXTURE)
    assert base["consistency_change"] == base["semantic_consistency_change"] == 0
    assert abs(base["fd_to_baseline"]) < 1e-6 and base["psnr"] == base["lowfreq_psnr"] == 100.0
    assert base["psnr_se"] == base["lowfreq_psnr_se"] == 0.0 and base["feature_distance"] < 1e-6
    assert 0 <= t["semantic_consistency"] <= 1 and t["psnr"] < 100 and t["lowfreq_psnr"] < 100
    assert t["psnr_se"] > 0 and t["lowfreq_psnr_se"] > 0
    table = format_rows(rows)
    assert "semantic / layout" in table and "texture / fidelity" in table


def test_the_table_puts_each_figure_in_its_column():
    """One hand-made row, every figure different: the table shows each where its header says."""
    row = dict(method="var-d16", seconds=12.34, speedup=1.875, semantic_consistency=0.812,
               semantic_consistency_change=-0.031, semantic_change_se=0.012, semantic_lost=3, semantic_gained=1,
               lowfreq_psnr=31.26, lowfreq_psnr_se=0.44, class_consistency=0.655, consistency_change=0.021,
               change_se=0.017, lost=None, gained=None, fd_to_baseline=0.123, psnr=100.0, psnr_se=0.0, ssim=0.901,
               ssim_se=0.004)
    lines = format_rows([row], title="T").splitlines()
    assert lines[0] == "T"
    assert lines[2].split() == ["method", "time", "s", "speedup", "|", "cons.", "change", "+-SE", "lost/gained",
                                "LF-PSNR", "+-SE", "|", "cons.", "change", "+-SE", "lost/gained", "FD", "PSNR", "+-SE",
                                "SSIM", "+-SE"]
    assert lines[3].split() == ["var-d16", "12.3", "1.88x", "|", "0.812", "-0.031", "0.012", "3/1", "31.3", "0.4", "|",
                                "0.655", "+0.021", "0.017", "-", "0.123", "99.9", "0.0", "0.901", "0.004"]


def test_evaluate_same_seeds_same_numbers():
    """The unpatched baseline is deterministic for the same seeds: every figure repeats exactly."""
    var = reference_var("tiny")
    clf, sem = _judges(var.num_classes)
    methods = [("baseline", BASELINE), ("t", LOWRANK)]
    runs = [evaluate(var, methods, classifier=clf, semantic_classifier=sem, per_class=1, seed=5, cfg=2.0)
            for _ in range(2)]
    other = evaluate(var, methods, classifier=clf, semantic_classifier=sem, per_class=1, seed=6, cfg=2.0)
    timeless = [[{k: v for k, v in r.items() if k not in ("seconds", "speedup")} for r in rows] for rows in runs]
    assert timeless[0] == timeless[1]
    assert other[1]["psnr"] != runs[0][1]["psnr"]  # another seed draws other samples


def test_evaluate_prompts_with_a_feature_function_and_no_classifier():
    """STAR (prompts, an encode): a fixed random conv as the feature space; no classifier gives
    no consistency figures, not a crash; targets and a classifier give them."""
    ref = build_reference("star", "tiny", cfg=3.0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 4, stride=4)

    def feature_fn(img):
        return conv(img).flatten(1)

    prompts = ["a red fox", "a lighthouse", "cherries"]
    methods = [("baseline", BASELINE), ("star-d16", stagevar.preset("star-d16"))]
    with torch.no_grad():
        rows = evaluate(ref.model, methods, prompts, feature_fn=feature_fn, encode=ref.encode, batch=2,
                        **ref.call_kwargs)
    base, acc = rows
    assert all(acc[k] is None for k in SEMANTIC + TEXTURE)
    assert abs(base["fd_to_baseline"]) < 1e-6 and base["psnr"] == base["lowfreq_psnr"] == 100.0
    assert acc["fd_to_baseline"] > 0 and acc["feature_distance"] > 0 and acc["psnr"] < 100 and acc["lowfreq_psnr"] < 100
    assert "-" in format_rows(rows).splitlines()[-1]

    clf = CropClassifier(2).eval()
    rows = evaluate(ref.model, methods, prompts, classifier=clf, targets=[0, 1, 0], encode=ref.encode, **ref.call_kwargs)
    assert rows[0]["class_consistency"] is not None and rows[1]["semantic_consistency"] is None
    rows = evaluate(ref.model, methods, prompts, classifier=clf, encode=ref.encode, **ref.call_kwargs)
    assert rows[1]["class_consistency"] is None and rows[1]["fd_to_baseline"] > 0  # prompts are no targets
    with pytest.raises(ValueError, match="conditions"):
        evaluate(ref.model, methods, feature_fn=feature_fn, encode=ref.encode)
    with pytest.raises(ValueError, match="targets"):
        evaluate(ref.model, methods, prompts, classifier=clf, targets=[0], encode=ref.encode, **ref.call_kwargs)


def test_evaluate_interleaves_without_leaking_state():
    """Methods alternate batch by batch; a batch generated right after an accelerated one must
    still match the unpatched call bit for bit (the "none" preset runs stagevar's loop unchanged)."""
    from stagevar.presets import preset

    var = reference_var("tiny")
    clf = CropClassifier(var.num_classes).eval()
    methods = [("baseline", BASELINE), ("lowrank", LOWRANK.replace(name="lowrank")), ("none", preset("none"))]
    rows = evaluate(var, methods, classifier=clf, per_class=2, batch=3, cfg=2.0)
    assert rows[2]["psnr"] == 100.0 and rows[2]["lost"] == rows[2]["gained"] == 0
    assert rows[1]["psnr"] < 100.0 and not stagevar.is_accelerated(var)


def test_evaluate_failure_leaves_the_model_unpatched(monkeypatch):
    from stagevar.engine import Engine

    var = reference_var("tiny")

    def boom(*a, **k):
        raise RuntimeError("unit failed")

    monkeypatch.setattr(Engine, "_lowrank_unit", boom)
    with pytest.raises(RuntimeError, match="unit failed"):
        evaluate(var, [("baseline", BASELINE), ("lowrank", LOWRANK)], per_class=1, cfg=2.0)
    assert not stagevar.is_accelerated(var)
    var.autoregressive_infer_cfg(B=1, label_B=torch.tensor([0]), g_seed=0, cfg=2.0)


def test_bundled_judges_on_real_crops():
    """The semantic judge shipped for stagevar-tiny-var separates the classes on held-out real
    crops and keeps its accuracy under blur and JPEG (a few crops; the full table is in BENCHMARKS.md)."""
    pytest.importorskip("skimage")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("quality_reference", os.path.join(root, "examples", "quality_reference.py"))
    Q = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(Q)
    semantic = load_classifier(Q.SEMANTIC_PATH, 12)
    assert semantic.downsample == Q.SEMANTIC_DOWNSAMPLE
    acc = Q.validate_judges({"semantic": semantic}, per_class=4)["semantic"]
    assert acc["clean"] >= 0.9
    assert all(a >= acc["clean"] - 0.05 for a in acc.values())


def test_consistency_runs_where_the_classifier_is():
    """Images from a model on another device are judged on the classifier's (the bundled judges load on the CPU)."""
    from stagevar.tools.quality import CropClassifier, consistency

    clf = CropClassifier(3, width=8).eval()
    img = torch.rand(4, 3, 16, 16)
    want = consistency(clf, img, torch.tensor([0, 1, 2, 0]))
    calls = []
    real_to = torch.Tensor.to

    class Elsewhere(torch.Tensor):  # an image tensor that must be moved before the CPU classifier reads it
        def to(self, *a, **k):
            calls.append(a)
            return real_to(self.as_subclass(torch.Tensor), *a, **k)

    far = img.as_subclass(Elsewhere)
    assert consistency(clf, far, torch.tensor([0, 1, 2, 0])) == want
    assert any(torch.device("cpu") in a for a in calls)
