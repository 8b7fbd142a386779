"""stagevar bench: the harness on tiny models (no timing assertions beyond sanity)."""
import json

import pytest
import torch

import stagevar
from stagevar.tools.bench import format_report, run
from stagevar.tools.cli import main
from stagevar.engine import Engine
from stagevar.tools.runner import BASELINE, resolve_methods
from stagevar.models import reference_infinity, reference_var

ALL_VAR = ["baseline", "var-d16", "cfg-only", "lowrank-only", "fastvar", "skip-last-1", "cond-last-1"]


def _check_report(rep, labels):
    assert [m["method"] for m in rep["methods"]] == labels
    base = rep["methods"][0]
    assert base["psnr"] == 100.0 and base["ssim"] == pytest.approx(1.0)
    assert all(v == 1.0 for v in base["token_agreement"].values())
    assert base["loop_speedup"] == 1.0 and base["config"] is None
    timed = [(t["method"], t["execution"]) for t in rep["timing"]]
    assert ("none", "eager") in timed and all((label, "eager") in timed for label in labels)
    for m in rep["methods"]:
        assert 0 < m["loop_ms"] < m["e2e_ms"]  # the call is the loop plus its decode
        assert m["gflops"] > 0 and m["flop_ratio"] > 0
        assert m["memory"]["kind"].startswith(("cpu", "cuda"))
        assert len(m["per_scale"]) == len(base["per_scale"])
    json.dumps(rep)


def test_var_report_for_every_method(tmp_path):
    var = reference_var("tiny")
    kw = dict(B=2, label_B=torch.tensor([1, 2]), g_seed=0, cfg=3.0)
    rep = run(var, ALL_VAR, kw, repeats=1, warmup=0, out_dir=str(tmp_path))
    _check_report(rep, ALL_VAR)
    by = {m["method"]: m for m in rep["methods"]}
    assert by["skip-last-1"]["skipping"] and by["skip-last-1"]["token_agreement"]["3"] is None
    assert by["cfg-only"]["per_scale"][-1]["mode"] == "uncond-only"
    assert by["lowrank-only"]["per_scale"][-1]["mode"] == "low-rank" and by["lowrank-only"]["per_scale"][-1]["rows"] == 4
    assert by["fastvar"]["config"]["reducer"] == "fastvar"
    last = by["cond-last-1"]["per_scale"]
    assert last[-1]["mode"] == "cond-only" and last[-1]["rows"] == 2 and last[-2]["rows"] == 4
    assert by["var-d16"]["flop_ratio"] > 1.0
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert [m["method"] for m in on_disk["methods"]] == ALL_VAR
    assert (tmp_path / "images.png").exists()
    assert "var-d16" in format_report(rep)
    assert not stagevar.is_accelerated(var)


def test_infinity_report_and_user_config_round_trip(tmp_path):
    b = reference_infinity("tiny")
    sched = b.schedule("2:1")
    K = len(sched)
    cfg = stagevar.StageVARConfig(refine_start=-2, branch="cond", rank_ratio=0.3, name="mine")
    path = tmp_path / "mine.json"
    cfg.save(path)
    kw = dict(vae=b.vae, scale_schedule=sched, label_B_or_BLT=b.encode(["a cat", "a dog"]), B=2, g_seed=0,
              cfg_list=[3.0] * K, tau_list=[1.0] * K, ret_img=True)
    rep = run(b.model, ["infinity-2b", "infinity-2b-paper", str(path)], kw, repeats=1, warmup=0)
    _check_report(rep, ["baseline", "infinity-2b", "infinity-2b-paper", "mine"])
    assert stagevar.StageVARConfig.from_dict(rep["methods"][3]["config"]) == cfg
    assert rep["methods"][2]["skipping"]
    # scale skipping is named where each table prints the method, and only there
    timing_lines = {t.split()[0]: t for t in format_report(rep).splitlines() if t.startswith(("infinity-2b", "mine"))}
    assert all(("[scale skipping ON]" in line) == (name == "infinity-2b-paper") for name, line in timing_lines.items())
    assert sum("infinity-2b-paper [scale skipping ON]" in line for line in format_report(rep).splitlines()) == 2


def test_bad_methods_and_shapes_say_what_to_change(tmp_path, capsys):
    tiny = reference_var("tiny")
    with pytest.raises(stagevar.ConfigError, match="unknown config 'turbo'.*; a method may also be 'baseline'"):
        resolve_methods(["turbo"], tiny)
    with pytest.raises(stagevar.ConfigError, match="skip-last-N with N >= 1"):
        resolve_methods(["skip-last-0"], tiny)
    with pytest.raises(stagevar.ConfigError, match="write uncond-last-N with N >= 1, e.g. uncond-last-2"):
        resolve_methods(["uncond-last-x"], tiny)
    (_, c), = resolve_methods(["uncond-last-2"], tiny)[1:]
    assert (c.refine_start, c.branch, c.rank_ratio, c.rank_ratios, c.skip) == (-2, "uncond", None, {}, ())
    assert resolve_methods(["var-d16"], tiny)[0] == ("baseline", BASELINE)  # the unpatched call first
    with pytest.raises(stagevar.ConfigError, match="no such config file"):
        resolve_methods([str(tmp_path / "nope.json")], tiny)
    with pytest.raises(SystemExit):
        main(["bench", "--model", "infinity", "--shape", "d16"])
    assert "is not a infinity shape" in capsys.readouterr().err
    var = reference_var("tiny")
    stagevar.accelerate(var)
    with pytest.raises(ValueError, match="needs the unpatched model"):
        run(var, ["baseline"], dict(B=1, label_B=1), repeats=1)


def test_run_restores_the_model_when_a_method_raises(monkeypatch):
    """A method failing mid-run leaves the model unpatched, its decoder unwrapped, and usable."""
    var = reference_var("tiny")

    def boom(*a, **k):
        raise RuntimeError("unit failed")

    monkeypatch.setattr(Engine, "_lowrank_unit", boom)
    kw = dict(B=2, label_B=torch.tensor([1, 2]), g_seed=0, cfg=3.0)
    with pytest.raises(RuntimeError, match="unit failed"):
        run(var, ["baseline", "cfg-only", "var-d16"], kw, repeats=1, warmup=0)
    assert not stagevar.is_accelerated(var)
    assert "fhat_to_img" not in vars(var.vae_proxy[0])
    monkeypatch.undo()
    assert run(var, ["cfg-only"], kw, repeats=1, warmup=0)["methods"][1]["method"] == "cfg-only"


def test_fastvar_plan_prunes_middle_blocks_only():
    from stagevar.plan import resolve_plan, unit_layout

    cfg = stagevar.preset("fastvar")
    plans = resolve_plan(cfg, [(p, p) for p in (1, 2, 4, 8, 16)], unit_layout(20, 1))
    keep = {-2: int(0.6 * 64) + 1, -1: int(0.5 * 256) + 1}
    for si, r in keep.items():  # blocks round(0.1 * 20) = 2 .. round(0.85 * 20) = 17 pruned, the others intact
        assert plans[si].ranks == (None,) * 2 + (r,) * 15 + (None,) * 3
    assert all(p.ranks is None for p in plans[:-2])
    assert cfg.branch == "both" and cfg.skip == () and cfg.reducer == "fastvar"


def test_cli_bench_runs(tmp_path, capsys):
    assert main(["bench", "--shape", "tiny", "--repeats", "1", "--warmup", "0", "--quiet", "--out", str(tmp_path),
                 "--methods", "baseline", "var-d16"]) == 0
    out = capsys.readouterr().out
    assert "var-d16" in out and (tmp_path / "bench.json").exists()


def test_cli_bench_graphs_on_cpu_fails_before_measuring(tmp_path, capsys, monkeypatch):
    import stagevar.tools.bench

    monkeypatch.setattr(stagevar.tools.bench, "run", lambda *a, **k: pytest.fail("measured before refusing"))
    assert main(["bench", "--shape", "tiny", "--execution", "eager", "graphs", "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "execution='graphs' cannot run" in err and "CUDA" in err


def test_cli_demo_on_tiny_models(tmp_path, capsys):
    for model in ["var", "infinity"]:
        out = tmp_path / f"{model}.png"
        assert main(["demo", "--model", model, "--shape", "tiny", "--repeats", "1", "--out", str(out)]) == 0
        assert out.exists()
    text = capsys.readouterr().out
    assert "speedup" in text and "per-seed PSNR" in text
    out = tmp_path / "two.png"
    assert main(["demo", "--model", "var", "--shape", "tiny", "--repeats", "1", "--out", str(out),
                 "--config", "var-d16", "stagevar-tiny-var"]) == 0
    text = capsys.readouterr().out
    assert "[var-d16]" in text and "[stagevar-tiny-var]" in text and text.count("speedup") == 2
    assert "one row per config: var-d16, stagevar-tiny-var" in text
    from PIL import Image

    assert Image.open(out).size[1] > Image.open(tmp_path / "var.png").size[1]  # baseline + two rows, not one


def test_cli_calibrate_runs(tmp_path, capsys):
    for model in ["var", "infinity"]:
        out = tmp_path / f"{model}.json"
        assert main(["calibrate", "--model", model, "--shape", "tiny", "--no-sweep", "--out", str(out),
                     "--config-out", str(tmp_path / f"{model}-cfg.json"), "--max-rank-ratio", "1"]) == 0
        assert out.exists() and stagevar.StageVARConfig.load(tmp_path / f"{model}-cfg.json").alpha == 0.96
    text = capsys.readouterr().out
    assert "recommended at alpha=0.96" in text and "low-rank scales [" in text


def test_bench_reports_both_quality_views_where_the_model_has_judges():
    from stagevar.models import load_pretrained
    from stagevar.tools.quality import bundled_judges

    var = load_pretrained("stagevar-tiny-var")
    judges = bundled_judges(var)
    assert set(judges) == {"semantic", "texture"} and judges["semantic"].downsample > 1
    labels = [0, 5, 7]
    kw = dict(B=3, label_B=torch.tensor(labels), g_seed=0, cfg=4.0, top_p=0.95)
    rep = run(var, ["baseline", "var-d16"], kw, repeats=1, warmup=0, judges=judges, targets=torch.tensor(labels))
    base, acc = rep["methods"]
    assert set(base["consistency"]) == {"semantic", "texture"}
    assert base["consistency_change"] == {"semantic": 0.0, "texture": 0.0}
    for view, value in acc["consistency"].items():
        assert min(abs(value - k / 3) for k in range(4)) < 1e-6  # a share of 3 images
        assert acc["consistency_change"][view] == pytest.approx(value - base["consistency"][view])
    assert "semantic cons." in format_report(rep) and "texture cons." in format_report(rep)
    assert bundled_judges(reference_var("tiny")) == {}  # no classes, no judges: no columns
    rep = run(reference_var("tiny"), ["baseline"], dict(B=2, label_B=torch.tensor([1, 2]), g_seed=0), repeats=1,
              warmup=0)
    assert rep["methods"][0]["consistency"] == {} and "cons." not in format_report(rep)


def test_bench_default_methods_follow_the_models_preset():
    """The default method list is the preset accelerate() picks for this model and its relatives."""
    from stagevar.adapters import adapter_for
    from stagevar.presets import compared

    for shape, want in (("tiny", "infinity-2b"), ("8b-tiny", "infinity-8b")):
        model = reference_infinity(shape).model
        names = compared(adapter_for(model).default_preset)
        assert names[:2] == [want, want + "-paper"]
        resolve_methods(names, model)  # every default name resolves
    assert compared("var-d16", carried="stagevar-tiny-var")[:2] == ["var-d16", "stagevar-tiny-var"]
    assert compared("var-d16", carried="calibrated-a0.96")[:2] == ["var-d16", "cfg-only"]  # not a name: left out
    assert compared("star-d30")[:2] == ["star-d30", "star-d16"]


def test_timing_rows_give_images_per_second_and_peak_memory(monkeypatch):
    """img/s is B over the median wall time; the peak is measured in one more call per arm, and a
    method that holds a large tensor during its call shows it."""
    from stagevar.tools import bench

    var = reference_var("tiny")
    kw = dict(B=3, label_B=torch.tensor([1, 2, 3]), g_seed=0, cfg=3.0)
    held = []
    real_finish = Engine.finish

    def finish_holding_64_mib(self, call):  # an accelerated call that allocates 64 MiB while it runs
        held.append(torch.ones(16 * 2 ** 20))
        try:
            return real_finish(self, call)
        finally:
            held.clear()

    monkeypatch.setattr(Engine, "finish", finish_holding_64_mib)
    rows = bench.interleaved(var, kw, resolve_methods(["baseline", "var-d16"], var), repeats=2, warmup=0)
    by = {r["method"]: r for r in rows}
    for r in rows:
        assert r["images_per_s"] == pytest.approx(3 / (r["e2e_ms"] / 1e3))
        assert r["peak_kind"].startswith("cpu_peak_") and r["peak_mib"] is not None
    assert by["var-d16"]["peak_mib"] >= 60 and by["baseline"]["peak_mib"] < 30
    text = bench.format_timing("t", rows)
    assert "peak MiB" in text and "img/s" in text and "CPU peak increase" in text
