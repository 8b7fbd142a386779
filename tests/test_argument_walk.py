"""Every public function's arguments checked before any work, like the entry point's: the error names
the function and the argument, and nothing was generated (the model untouched)."""
import numpy as np
import pytest
import torch

import stagevar
from stagevar.adapters import ADAPTERS, Adapter, register_adapter
from stagevar.tools import bench, cli, quality
from stagevar.tools.calibrate import calibrate
from stagevar.tools.runner import BASELINE

from conftest import gen_kwargs


class _Calls:
    """Counts the model's transformer block calls (no work done: zero)."""

    def __init__(self, model):
        self.n = 0
        self.handles = [b.register_forward_hook(self._hook) for b in model.blocks]

    def _hook(self, *_):
        self.n += 1

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.fixture
def counted(tiny):
    calls = _Calls(tiny)
    yield tiny, calls
    calls.close()


@pytest.mark.parametrize("kwargs, match", [
    (dict(conditions="3"), r"stagevar.calibrate: conditions='3'; give a list of class labels or prompts"),
    (dict(seeds=5), r"seeds=5; give a list of integer seeds"),
    (dict(seeds=[0, -1]), r"seeds\[1\]=-1; give an integer of at least 0"),
    (dict(seeds=[0, 1.5]), r"seeds\[1\]=1.5"),
    (dict(alphas=[0.9, True]), r"alphas\[1\]=True must be a number in \(0, 1\)"),
    (dict(alphas=[]), r"alphas is empty"),
    (dict(feature_fn="lowfreq"), r"feature_fn='lowfreq' is not callable"),
    (dict(feature_name=3), r"feature_name=3; give a string"),
    (dict(unit_blocks=0), r"unit_blocks=0; give a positive integer"),
    (dict(one_branch_sweep="no"), r"one_branch_sweep='no'; give True or False"),
    (dict(batch_size=2.0), r"batch_size=2.0; give a positive integer"),
    (dict(encode="tokenizer"), r"encode='tokenizer' is not callable"),
])
def test_calibrate_checks_each_argument_before_any_generation(counted, kwargs, match):
    model, calls = counted
    kwargs = dict(kwargs)  # the parameter is shared by every run of the test in one process
    conditions = kwargs.pop("conditions", [0, 1])
    with pytest.raises(ValueError, match=match):
        calibrate(model, conditions, **kwargs)
    assert calls.n == 0 and not stagevar.is_accelerated(model)


def test_calibrate_takes_numpy_integers_for_seeds_and_a_tensor_of_labels(tiny):
    a = calibrate(tiny, torch.tensor([0, 1]), seeds=[np.int64(3)], one_branch_sweep=False, batch_size=np.int32(2))
    b = calibrate(tiny, [0, 1], seeds=[3], one_branch_sweep=False)
    assert a.psnr_to_final == b.psnr_to_final and a.num_conditions == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods="var-d16"), r"stagevar.bench.run: methods='var-d16'; give a list of method names"),
    (dict(methods=[]), r"methods is empty"),
    (dict(methods=["baseline", 3]), r"methods must hold method names, strings; got 3 \(int\)"),
    (dict(repeats=0), r"repeats=0; give a positive integer"),
    (dict(warmup=-1), r"warmup=-1; give an integer of at least 0"),
    (dict(executions="eager"), r"executions='eager'; give a list of executions"),
    (dict(progress=1), r"progress=1; give True or False"),
    (dict(title=7), r"title=7; give a string"),
    (dict(judges=["texture"]), r"judges must be a dict"),
    (dict(judges={"texture": lambda x: x}), r"judges need targets"),
])
def test_bench_run_checks_each_argument_before_any_generation(counted, kwargs, match):
    model, calls = counted
    kw = dict(methods=["baseline", "var-d16"], call_kwargs=gen_kwargs(2), repeats=1, warmup=0)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bench.run(model, **kw)
    assert calls.n == 0 and not stagevar.is_accelerated(model)


def test_bench_run_refuses_an_out_dir_that_is_a_file_before_timing(counted, tmp_path):
    model, calls = counted
    target = tmp_path / "bench_out"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match=r"stagevar.bench.run: cannot create the output folder .*bench_out"):
        bench.run(model, ["baseline", "var-d16"], gen_kwargs(2), repeats=1, warmup=0, out_dir=str(target))
    assert calls.n == 0 and target.read_text() == "not a folder"


@pytest.mark.parametrize("kwargs, match", [
    (dict(repeats=0), r"stagevar.bench.interleaved: repeats=0"),
    (dict(repeats=True), r"repeats=True"),
    (dict(warmup=0.5), r"warmup=0.5"),
    (dict(executions="graphs"), r"executions='graphs'"),
    (dict(call_kwargs=[]), r"call_kwargs must be a dict .* or a non-empty list"),
    (dict(call_kwargs=[gen_kwargs(2), 3]), r"call_kwargs must be a dict"),
])
def test_interleaved_checks_its_arguments(counted, kwargs, match):
    model, calls = counted
    kw = dict(call_kwargs=gen_kwargs(2), methods=[("baseline", BASELINE)], repeats=1, warmup=0)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        bench.interleaved(model, **kw)
    assert calls.n == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods="baseline"), r"stagevar.quality.evaluate: methods='baseline'; give a list of \(label, config\)"),
    (dict(methods=[("baseline",)]), r"methods must be \(label, config\) pairs"),
    (dict(per_class=0), r"per_class=0; give a positive integer"),
    (dict(batch=-2), r"batch=-2"),
    (dict(seed=-1), r"seed=-1; give an integer of at least 0"),
    (dict(seed="0"), r"seed='0'"),
    (dict(lowpass_factor=0), r"^stagevar.quality.evaluate: lowpass_factor=0; give a positive integer"),
    (dict(conditions="0123"), r"conditions='0123'; give a list of class labels or prompts"),
    (dict(targets=[0, -3]), r"targets\[1\]=-3"),
    (dict(classifier=lambda x: x), r"classifier must be a classifier with .features"),
    (dict(feature_fn=4), r"feature_fn=4 is not callable"),
    (dict(encode=[1]), r"encode=\[1\] is not callable"),
])
def test_quality_evaluate_checks_each_argument_before_any_generation(counted, kwargs, match):
    model, calls = counted
    kw = dict(methods=[("baseline", BASELINE), ("none", stagevar.preset("none"))], conditions=[0, 1], batch=2)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        quality.evaluate(model, **kw)
    assert calls.n == 0


def test_quality_evaluate_takes_tensors_of_labels_and_targets(tiny):
    methods = [("baseline", BASELINE), ("none", stagevar.preset("none"))]
    rows = quality.evaluate(tiny, methods, torch.tensor([0, 1]), targets=torch.tensor([0, 1]), batch=2)
    plain = quality.evaluate(tiny, methods, [0, 1], targets=[0, 1], batch=2)
    assert [r["psnr"] for r in rows] == [r["psnr"] for r in plain] and rows[1]["n"] == 2


def test_load_pretrained_names_a_bad_device_before_reading():
    from stagevar.models import load_pretrained

    with pytest.raises(ValueError, match=r"load_pretrained: device='gpu0' is not a device; give a torch.device"):
        load_pretrained("stagevar-tiny-var", device="gpu0")


def test_register_adapter_checks_first_and_what_the_family_requires():
    class Claims(Adapter):
        family = "claims-everything"

    class Fine(Adapter):
        family = "fine"
        required = ("some_attribute_no_model_has",)

    before = list(ADAPTERS)
    with pytest.raises(TypeError, match=r"Claims.required=\(\); give a tuple of the attribute names"):
        register_adapter(Claims)
    with pytest.raises(TypeError, match=r"register_adapter: first='yes'; give True"):
        register_adapter(Fine, first="yes")
    Bare = type("Bare", (Adapter,), dict(family="bare", required="blocks"))
    with pytest.raises(TypeError, match=r"Bare.required='blocks'"):
        register_adapter(Bare)
    assert ADAPTERS == before
    try:
        assert register_adapter(Fine, first=True) is Fine and ADAPTERS[0] is Fine
    finally:
        ADAPTERS.remove(Fine)
    assert ADAPTERS == before


@pytest.mark.parametrize("argv, match", [
    (["demo", "--model", "var", "--shape", "tiny", "--device", "gpu"], "--device 'gpu' is not a device"),
    (["bench", "--model", "var", "--shape", "tiny", "--device", "cuda:7"], "--device cuda:7"),
    (["calibrate", "--model", "infinity", "--prompts"], "--prompts: expected at least one argument"),
    (["calibrate", "--model", "var", "--conditions"], "--conditions: expected at least one argument"),
])
def test_cli_refuses_a_device_and_empty_lists_before_any_work(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_calibrate_plot_without_matplotlib_is_refused_before_calibrating(monkeypatch, capsys, tmp_path):
    from stagevar.tools import figures

    monkeypatch.setattr(figures, "matplotlib_figure", lambda: None)
    out = tmp_path / "cal.json"
    with pytest.raises(SystemExit):
        cli.main(["calibrate", "--model", "var", "--shape", "tiny", "--out", str(out), "--plot", str(tmp_path / "p.png")])
    assert "--plot needs matplotlib" in capsys.readouterr().err and not out.exists()


def test_the_argument_checks_themselves():
    from stagevar import _args

    assert _args.optional_whole("f", "n", 0, minimum=0) == 0 and _args.optional_whole("f", "n", None) is None
    assert type(_args.whole("f", "n", np.int16(3))) is int
    with pytest.raises(ValueError, match=r"^f: n=-1; give an integer of at least 0$"):
        _args.optional_whole("f", "n", -1, minimum=0)
    assert _args.names("f", "xs", ("a", "b"), "names") == ["a", "b"]
    assert _args.seeds("f", "s", range(3)) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"^f: s=\{0: 1\}; give a list of integer seeds"):
        _args.seeds("f", "s", {0: 1})
    with pytest.raises(ValueError, match=r"\.\.\.; give a list"):  # long values are cut
        _args.items("f", "xs", "x" * 200, "things")
    # a repr of up to 80 characters is shown whole; a longer one as its first 77 and "..."
    assert _args._shown("x" * 78) == repr("x" * 78)
    assert _args._shown("x" * 79) == "'" + "x" * 76 + "..."
