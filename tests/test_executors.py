"""The graph executor, on a CPU with a stand-in backend (tests/graph_fake.py), and CUDA checks."""
import copy
import warnings

import pytest
import torch

import stagevar
import stagevar.executors as ex
from stagevar import GraphFallbackWarning, GraphsUnavailableError
from stagevar.api import _ATTR
from stagevar.models import reference_infinity, reference_var
from stagevar.tools import gpu_checks

from conftest import gen_kwargs
from graph_fake import ReplayingBackend

VAR_CONFIGS = ["none", "var-d16", "stagevar-tiny-var"]


def _graphs(monkeypatch, model, config, max_keys=2, **fake):
    """Accelerate ``model`` with execution='graphs' on the stand-in backend, text unpadded (the
    buckets have tests of their own: test_text_buckets.py); returns the backend."""
    backend = ReplayingBackend(model, **fake)
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: backend)
    stagevar.accelerate(model, config, execution="graphs", capture_after=2, text_buckets=())
    getattr(model, _ATTR).engine.executor.max_keys = max_keys
    return backend


def _executor(model):
    return getattr(model, _ATTR).engine.executor


def _eager(model, config, kw):
    with stagevar.accelerated(model, config, execution="eager"):
        return model.autoregressive_infer_cfg(**kw)


def _count_block_python(model, backend):
    """Counts adapter.run_block calls made outside the stand-in's replays."""
    adapter = getattr(model, _ATTR).engine.adapter
    real, counter = adapter.run_block, [0]

    def counted(*a, **k):
        if not backend.replaying:
            counter[0] += 1
        return real(*a, **k)

    adapter.run_block = counted
    return counter


def test_graphs_refused_on_cpu_and_auto_runs_eager(small):
    with pytest.raises(GraphsUnavailableError, match="CUDA"):
        stagevar.accelerate(small, "var-d16", execution="graphs")
    assert not stagevar.is_accelerated(small)
    with pytest.raises(ValueError, match="execution"):
        stagevar.accelerate(small, "var-d16", execution="fast")
    stagevar.accelerate(small, "var-d16")
    small.autoregressive_infer_cfg(**gen_kwargs(2))
    assert stagevar.last_report(small).executor == "eager"


@pytest.mark.parametrize("config", VAR_CONFIGS)
def test_var_replays_equal_eager_for_new_labels_and_seeds(monkeypatch, small, config):
    backend = _graphs(monkeypatch, small, config)
    kw = gen_kwargs(3, seed=1)
    out1 = small.autoregressive_infer_cfg(**kw)
    rep = stagevar.last_report(small)
    assert rep.executor == "eager" and "first call" in rep.note
    out2 = small.autoregressive_infer_cfg(**kw)
    rep = stagevar.last_report(small)
    assert rep.executor == "graphs" and "captured" in rep.note and backend.captures == len(rep.scales)
    assert torch.equal(out1, out2)
    counter = _count_block_python(small, backend)
    for labels, seed in [([3, 4, 5], 7), ([9, 0, 9], 1), ([1, 1, 2], 123)]:
        kw = gen_kwargs(3, seed=seed, label_B=torch.tensor(labels))
        counter[0] = 0
        got = small.autoregressive_infer_cfg(**kw)
        assert stagevar.last_report(small).executor == "graphs"
        assert counter[0] == 0, "a replayed call ran per-block Python"
        assert torch.equal(got, _eager(small, config, kw))
    assert backend.captures == len(stagevar.last_report(small).scales)  # never captured again


def test_infinity_replays_equal_eager_for_new_prompts_and_seeds(monkeypatch):
    from test_infinity import call_kwargs

    bundle = reference_infinity("tiny")
    m = bundle.model
    backend = _graphs(monkeypatch, m, "infinity-2b")
    kw = call_kwargs(bundle, 2, "16:9", seed=3)
    m.autoregressive_infer_cfg(**kw)
    m.autoregressive_infer_cfg(**kw)
    assert stagevar.last_report(m).executor == "graphs"
    counter = _count_block_python(m, backend)
    # same token count per prompt, other words: the same key
    kw2 = dict(kw, label_B_or_BLT=bundle.encode(["a green dog lying on a rug", "sea"]), g_seed=11)
    got = m.autoregressive_infer_cfg(**kw2)[2]
    assert stagevar.last_report(m).executor == "graphs" and counter[0] == 0
    assert torch.equal(got, _eager(m, "infinity-2b", kw2)[2])
    assert len(_executor(m).keys) == 1


def test_every_static_input_is_copied_in(monkeypatch, small):
    """Poison the captured inputs: a replay must overwrite every one of them."""
    _graphs(monkeypatch, small, "var-d16")
    kw = gen_kwargs(2, seed=0)

    def captured():  # a fresh key, captured; its entry
        stagevar.accelerate(small, "var-d16", execution="graphs", capture_after=2)
        small.autoregressive_infer_cfg(**kw)
        small.autoregressive_infer_cfg(**kw)
        entry = next(iter(_executor(small)._entries.values()))
        for t in entry.static:
            t.fill_(float("nan"))
        return entry

    n = len(captured().static)
    assert n >= 4
    kw2 = gen_kwargs(2, seed=5, label_B=torch.tensor([7, 2]))
    want = _eager(small, "var-d16", kw2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphFallbackWarning)
        assert torch.equal(small.autoregressive_infer_cfg(**kw2), want)
    assert stagevar.last_report(small).executor == "graphs"

    # removing any one copy is caught: a stale output, or NaN probabilities reaching the sampler (the
    # replay fails: that key falls back to eager with a warning)
    real = ex.GraphExecutor._copy_inputs
    for skip in range(n):
        def copy_but_one(static, new, skip=skip):
            real([t for i, t in enumerate(static) if i != skip], [t for i, t in enumerate(new) if i != skip])

        entry = captured()
        monkeypatch.setattr(ex.GraphExecutor, "_copy_inputs", staticmethod(copy_but_one))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GraphFallbackWarning)
            got = small.autoregressive_infer_cfg(**kw2)
        failed = any("replay failed" in str(w.message) for w in caught)
        assert failed or not torch.equal(got, want), \
            f"input {skip} {tuple(entry.static[skip].shape)} is not read from the captured tensors"
        if failed:  # the fallback ran the call eagerly: the right images, and the key stays eager
            assert torch.equal(got, want) and stagevar.last_report(small).executor == "eager"
        monkeypatch.setattr(ex.GraphExecutor, "_copy_inputs", staticmethod(real))


def test_replays_draw_from_each_calls_seed(monkeypatch, small):
    """A replay must draw from the call's seed (sampling and projection), not continue the last stream."""
    _graphs(monkeypatch, small, "var-d16")
    kw = gen_kwargs(2, seed=4)
    small.autoregressive_infer_cfg(**kw)
    with warnings.catch_warnings():  # a fallback to eager would pass the comparisons below without a replay
        warnings.simplefilter("error", GraphFallbackWarning)
        a = small.autoregressive_infer_cfg(**kw)
        b = small.autoregressive_infer_cfg(**kw)
        assert torch.equal(a, b) and stagevar.last_report(small).executor == "graphs"
        c = small.autoregressive_infer_cfg(**gen_kwargs(2, seed=5))
    assert not torch.equal(a, c) and stagevar.last_report(small).executor == "graphs"


@pytest.mark.parametrize("change", ["B", "cfg", "top_k", "block", "weights_reloaded", "quantizer_reloaded", "data_swapped",
                                    "buffer_replaced"])
def test_a_changed_call_or_model_captures_anew(monkeypatch, small, change):
    _graphs(monkeypatch, small, "var-d16", max_keys=4)
    kw = gen_kwargs(2, seed=0)
    small.autoregressive_infer_cfg(**kw)
    small.autoregressive_infer_cfg(**kw)
    assert len(_executor(small).keys) == 1
    if change == "B":
        kw = gen_kwargs(3, seed=0)
    elif change == "cfg":
        kw = gen_kwargs(2, seed=0, cfg=2.0)
    elif change == "top_k":
        kw = gen_kwargs(2, seed=0, top_k=5)
    elif change == "block":
        small.blocks[1] = copy.deepcopy(small.blocks[1])
    elif change == "quantizer_reloaded":  # the VQVAE sits outside the model's module tree (vae_quant_proxy)
        quant = small.vae_quant_proxy[0]
        name, p = next(quant.named_parameters())
        mod = quant.get_submodule(name.rpartition(".")[0]) if "." in name else quant
        setattr(mod, name.rpartition(".")[2], torch.nn.Parameter(p.detach().clone()))
    elif change == "data_swapped":  # new storage under the same Parameter object (what model.to() does)
        w = small.blocks[0].attn.proj.weight
        w.data = w.data.clone()
    elif change == "buffer_replaced":
        name, buf = next((n, b) for n, b in small.named_buffers() if b is not None)
        mod = small.get_submodule(name.rpartition(".")[0]) if "." in name else small
        setattr(mod, name.rpartition(".")[2], buf.clone())
    else:  # new storage for a parameter (e.g. a re-load that replaces tensors)
        small.blocks[0].attn.proj.weight = torch.nn.Parameter(small.blocks[0].attn.proj.weight.detach().clone())
    got = small.autoregressive_infer_cfg(**kw)
    rep = stagevar.last_report(small)
    assert rep.executor == "eager" and "first call" in rep.note
    assert len(_executor(small).keys) == 2
    assert torch.equal(got, _eager(small, "var-d16", kw))


def test_schedule_change_captures_anew_on_infinity(monkeypatch):
    from test_infinity import call_kwargs

    bundle = reference_infinity("tiny")
    m = bundle.model
    _graphs(monkeypatch, m, "none")
    for aspect in ["1:1", "1:1", "16:9"]:
        m.autoregressive_infer_cfg(**call_kwargs(bundle, 1, aspect))
    assert len(_executor(m).keys) == 2 and "first call" in stagevar.last_report(m).note


def test_lru_eviction_and_release(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16", max_keys=2)
    for B in (1, 2, 3):
        for _ in range(2):
            small.autoregressive_infer_cfg(**gen_kwargs(B))
    ex_ = _executor(small)
    assert len(ex_.keys) == 2
    assert [k[2][0] for k in ex_.keys] == [("B", 2), ("B", 3)]  # B=1 was least recently used
    released = backend.released
    stagevar.release_graphs(small)
    assert ex_.keys == [] and backend.released > released
    small.autoregressive_infer_cfg(**gen_kwargs(3))
    assert "first call" in stagevar.last_report(small).note
    stagevar.restore(small)
    assert ex_.keys == []


def test_capture_error_falls_back_once_without_retry(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16", fail_capture=True)
    kw = gen_kwargs(2, seed=2)
    want = _eager(small, "var-d16", kw)
    small.autoregressive_infer_cfg(**kw)
    with pytest.warns(GraphFallbackWarning, match="capture failed"):
        got = small.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, want)
    tries = backend.captures
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = small.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, want) and backend.captures == tries
    rep = stagevar.last_report(small)
    assert rep.executor == "eager" and "capture failed" in rep.note
    assert all(b.attn.cached_k is None for b in small.blocks)


def test_inexact_replay_falls_back_to_eager(monkeypatch, small):
    _graphs(monkeypatch, small, "var-d16", perturb=True)
    kw = gen_kwargs(2, seed=2)
    want = _eager(small, "var-d16", kw)
    small.autoregressive_infer_cfg(**kw)
    with pytest.warns(GraphFallbackWarning, match="differs"):
        got = small.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, want)
    assert torch.equal(small.autoregressive_infer_cfg(**kw), want)
    assert stagevar.last_report(small).executor == "eager"


def test_unseeded_calls_stay_eager(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16")
    stagevar.accelerate(small, "var-d16", execution="auto", capture_after=2)
    for _ in range(3):
        small.autoregressive_infer_cfg(**gen_kwargs(2, seed=None))
    rep = stagevar.last_report(small)
    assert rep.executor == "eager" and "unseeded" in rep.note and backend.captures == 0
    stagevar.accelerate(small, "var-d16", execution="graphs", capture_after=2)
    with pytest.raises(GraphsUnavailableError, match="unseeded"):
        small.autoregressive_infer_cfg(**gen_kwargs(2, seed=None))
    assert all(b.attn.cached_k is None for b in small.blocks)


def test_copies_of_the_model_carry_no_graphs(monkeypatch, small):
    _graphs(monkeypatch, small, "var-d16")
    kw = gen_kwargs(2, seed=0)
    small.autoregressive_infer_cfg(**kw)
    small.autoregressive_infer_cfg(**kw)
    twin = copy.deepcopy(small)
    assert _executor(twin).keys == [] and len(_executor(small).keys) == 1
    twin.autoregressive_infer_cfg(**kw)
    assert "first call" in stagevar.last_report(twin).note


def test_observed_calls_run_eager(monkeypatch, small):
    from stagevar.engine import Observer

    backend = _graphs(monkeypatch, small, "var-d16")
    engine = getattr(small, _ATTR).engine
    for _ in range(3):
        engine.observe(Observer(), **gen_kwargs(2))
    assert backend.captures == 0 and engine.last_report.executor == "eager"


@pytest.mark.parametrize("rng", ["model's own", "fresh per call"])
def test_random_labels_drawn_at_setup_replay_as_eager(monkeypatch, small, rng):
    """label_B=None: upstream VAR draws the labels from the call's generator before the first scale;
    a replay must continue that generator from there, not from the bare seed -- whether the call
    samples with the model's own ``rng`` (the one registered with the graphs) or, where that lives
    on another device, with a fresh generator whose state is carried over to the registered one."""
    if rng == "fresh per call":
        small.rng = None
    _graphs(monkeypatch, small, "var-d16")
    kw = dict(gen_kwargs(2, seed=3), label_B=None)
    small.autoregressive_infer_cfg(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphFallbackWarning)
        small.autoregressive_infer_cfg(**kw)
        for seed in (3, 8):
            kw = dict(gen_kwargs(2, seed=seed), label_B=None)
            got = small.autoregressive_infer_cfg(**kw)
            assert stagevar.last_report(small).executor == "graphs"
            assert torch.equal(got, _eager(small, "var-d16", kw))


def test_inference_mode_is_part_of_the_key(monkeypatch, small):
    """Tensors captured under torch.inference_mode() cannot be written outside it: another key."""
    _graphs(monkeypatch, small, "var-d16")
    kw = gen_kwargs(2, seed=1)
    with torch.inference_mode():
        small.autoregressive_infer_cfg(**kw)
        small.autoregressive_infer_cfg(**kw)
    assert stagevar.last_report(small).executor == "graphs"
    got = small.autoregressive_infer_cfg(**gen_kwargs(2, seed=2))
    assert "first call" in stagevar.last_report(small).note and len(_executor(small).keys) == 2
    assert torch.equal(got, _eager(small, "var-d16", gen_kwargs(2, seed=2)))


def test_a_failing_replay_falls_back_once(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16")
    kw = gen_kwargs(2, seed=2)
    small.autoregressive_infer_cfg(**kw)
    small.autoregressive_infer_cfg(**kw)
    replay = backend.replay

    def broken(graph):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (test)")

    monkeypatch.setattr(backend, "replay", broken)
    kw2 = gen_kwargs(2, seed=6)
    with pytest.warns(GraphFallbackWarning, match=r"replay failed \(RuntimeError: CUDA error: an illegal memory access"):
        got = small.autoregressive_infer_cfg(**kw2)
    assert torch.equal(got, _eager(small, "var-d16", kw2)) and stagevar.last_report(small).executor == "eager"
    monkeypatch.setattr(backend, "replay", replay)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small.autoregressive_infer_cfg(**kw2)
    assert "replay failed" in stagevar.last_report(small).note and backend.captures == len(stagevar.last_report(small).scales)


def test_exactness_check_sees_codes_when_the_call_returns_no_image(monkeypatch):
    """Infinity with ret_img=False returns no tensor: the check compares the summed codes as well."""
    from test_infinity import call_kwargs

    bundle = reference_infinity("tiny")
    m = bundle.model
    _graphs(monkeypatch, m, "infinity-2b", perturb=True)
    kw = call_kwargs(bundle, 1, seed=2, ret_img=False)
    m.autoregressive_infer_cfg(**kw)
    with pytest.warns(GraphFallbackWarning, match="differs"):
        m.autoregressive_infer_cfg(**kw)
    assert stagevar.last_report(m).executor == "eager"


def test_a_model_where_graphs_no_longer_run_goes_eager_or_raises(monkeypatch, small):
    """The device was checked at accelerate; a model moved since (e.g. off CUDA) is checked per call."""
    backend = _graphs(monkeypatch, small, "var-d16")
    available = backend.unavailable
    kw = gen_kwargs(2, seed=4, cfg=2.5)
    want = _eager(small, "var-d16", kw)
    for execution in ("auto", "graphs"):
        backend.unavailable = available
        stagevar.accelerate(small, "var-d16", execution=execution)
        backend.unavailable = lambda device: f"CUDA graphs need a CUDA device; this model is on {device}"
        if execution == "auto":  # never captured, however often called (a key's second call would capture)
            for _ in range(3):
                assert torch.equal(small.autoregressive_infer_cfg(**kw), want)
                assert stagevar.last_report(small).executor == "eager"
            assert backend.captures == 0
        else:
            with pytest.raises(GraphsUnavailableError, match="this model is on cpu"):
                small.autoregressive_infer_cfg(**kw)


# -- on a CUDA device --------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _no_fallback(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphFallbackWarning)
        return fn()


# The GPU checks (stagevar/tools/gpu_checks.py, also run without pytest by benchmarks/gpu.sh): all of
# them on CUDA; on a CPU, with the stand-in backend, those that need no real CUDA graph.
CHECKS = {name: (check, cuda_only) for name, check, cuda_only in gpu_checks.CHECKS}


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", list(CHECKS))
def test_cuda_check(name, capsys):
    detail = CHECKS[name][0](torch.device("cuda"))
    with capsys.disabled():
        print(f"\n  {name}: {detail}")


@pytest.mark.parametrize("name", [n for n, (_, cuda_only) in CHECKS.items() if not cuda_only])
def test_gpu_check_on_the_stand_in_backend(monkeypatch, name):
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend())
    assert CHECKS[name][0](torch.device("cpu"))


def test_gpu_checks_fail_where_the_executor_is_broken(monkeypatch):
    """The checks can fail: a replay that is not exact, and an executor that writes the caller's
    tensors, are caught."""
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend(perturb=True))
    with pytest.raises(GraphFallbackWarning, match="differs from the eager call"):  # the check's own replay check
        gpu_checks.exact_var(torch.device("cpu"))
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend())
    monkeypatch.setattr(ex, "_own_inputs", lambda st: None)
    with pytest.raises(AssertionError, match="caller"):
        gpu_checks.caller_tensors_unchanged(torch.device("cpu"))


def test_the_gpu_checks_driver_lists_runs_and_records_each_check_as_it_ends(monkeypatch, tmp_path, capsys):
    """``--dry-run --only`` lists just those; without CUDA every check says SKIP; with it, the checks
    run on the ``cuda`` device; ``run_checks`` goes on past a failing check, counts the failures and
    rewrites the JSON after every check (so a later check that hangs loses no earlier figure)."""
    import json

    assert gpu_checks.main(["--dry-run", "--only", "random_labels", "exact_var"]) == 0
    assert capsys.readouterr().out == "dry run: exact_var, random_labels\n"  # in CHECKS' order
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_checks.main([]) == 0
    assert capsys.readouterr().out.splitlines() == [f"SKIP  {n}: no CUDA device" for n in CHECKS]

    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_checks, "run_checks", lambda device, only, path: seen.append((device, only, path)) or 2)
    assert gpu_checks.main(["--only", "exact_var", "--json", "r.json"]) == 1
    assert seen == [(torch.device("cuda"), ["exact_var"], "r.json")]
    monkeypatch.undo()

    out = tmp_path / "checks.json"

    def first(device):
        return f"ran on {device}"

    def second(device):
        on_disk = json.loads(out.read_text())  # the first check's result is already written
        assert [r["check"] for r in on_disk] == ["first"]
        raise ValueError("broken")

    def third(device):
        return "after a failure"

    monkeypatch.setattr(gpu_checks, "CHECKS", [("first", first, False), ("second", second, False),
                                              ("third", third, True), ("skipped", first, False)])
    assert gpu_checks.run_checks(torch.device("cpu"), ["first", "second", "third"], str(out)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["PASS  first", "FAIL  second", "PASS  third"]
    assert lines[1].endswith("): ValueError: broken")
    got = json.loads(out.read_text())
    assert [(r["check"], r["verdict"], r["detail"]) for r in got] == [
        ("first", "PASS", "ran on cpu"), ("second", "FAIL", "ValueError: broken"), ("third", "PASS", "after a failure")]
    assert all(r["seconds"] >= 0 for r in got)


@pytest.mark.parametrize("check", ["exact_var", "exact_infinity"])
def test_gpu_checks_compare_graphed_none_with_the_unpatched_call(monkeypatch, check):
    """An engine whose every image is off by one, eager and graphed alike: graphed equals eager, but
    graphed ``none`` is not the unpatched call, and the check says so."""
    from stagevar.engine import Engine

    real = Engine.finish

    def off_by_one(self, call):
        out = real(self, call)
        return out + 1 if isinstance(out, torch.Tensor) else (*out[:2], out[2] + 1)

    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend())
    monkeypatch.setattr(Engine, "finish", off_by_one)
    with pytest.raises(AssertionError, match="^none: call 0 differs from the unpatched call"):
        getattr(gpu_checks, check)(torch.device("cpu"))


# ------------------------------------------------------------------------------------------
# Real use: a shape is captured on its N-th call; the caller's tensors and generator stay the caller's.
def test_a_key_is_captured_on_its_third_call_and_the_report_counts_it(monkeypatch, small):
    backend = ReplayingBackend(small)
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: backend)
    stagevar.accelerate(small, "var-d16", execution="graphs")  # capture_after=3, the default
    kw = gen_kwargs(2, seed=1)
    notes = []
    for _ in range(5):
        small.autoregressive_infer_cfg(**kw)
        rep = stagevar.last_report(small)
        notes.append((rep.executor, rep.key_counts, rep.note))
    assert [n[0] for n in notes] == ["eager", "eager", "graphs", "graphs", "graphs"]
    assert notes[0][2] == "call 1 of this key runs eager (first call; call 3 captures)"
    assert notes[1][2] == "call 2 of this key runs eager (the next call captures)"
    assert notes[0][1] == dict(calls=1, captures=0, replays=0, eager=1)
    assert notes[2][1] == dict(calls=3, captures=1, replays=0, eager=2)
    assert notes[4][1] == dict(calls=5, captures=1, replays=2, eager=2)
    assert "this call shape: 5 calls, 1 capture(s), 2 replays, 2 eager" in str(stagevar.last_report(small))
    assert backend.captures == len(small.patch_nums)
    other = gen_kwargs(3, seed=1)  # another shape, seen twice: never captured
    small.autoregressive_infer_cfg(**other)
    small.autoregressive_infer_cfg(**other)
    assert stagevar.last_report(small).key_counts == dict(calls=2, captures=0, replays=0, eager=2)
    assert backend.captures == len(small.patch_nums)
    with pytest.raises(ValueError, match="capture_after=1: a key captures on its N-th call, N >= 2"):
        ex.GraphExecutor(capture_after=1)


def test_replays_never_write_the_callers_tensors_and_leave_model_rng_as_eager(monkeypatch):
    """STAR's text tensors were the graphs' static inputs: later replays copied other prompts into them."""
    from test_star import call_kwargs as star_kwargs

    from stagevar.models import reference_star

    bundle = reference_star("tiny")
    m = bundle.model
    _graphs(monkeypatch, m, "star-d30")
    first = star_kwargs(bundle, 2, seed=1, prompts=["a red cat", "sky"])
    kept = {k: v.clone() for k, v in first.items() if isinstance(v, torch.Tensor)}
    m.autoregressive_infer_cfg(**first)
    m.autoregressive_infer_cfg(**first)  # captured on the caller's tensors
    assert stagevar.last_report(m).executor == "graphs"
    later = star_kwargs(bundle, 2, seed=5, prompts=["an old boat", "a dog"])
    got = m.autoregressive_infer_cfg(**later)
    assert stagevar.last_report(m).executor == "graphs"
    for k, v in kept.items():
        assert torch.equal(first[k], v), f"a replay wrote the caller's {k}"
    rng_after_replay = m.rng.get_state() if isinstance(getattr(m, "rng", None), torch.Generator) else None
    want = _eager(m, "star-d30", later)
    assert torch.equal(got, want)
    if rng_after_replay is not None and m.rng.device == torch.device("cpu"):
        assert torch.equal(rng_after_replay, m.rng.get_state())  # the eager call leaves model.rng there too


def test_a_failing_eager_reference_leaves_the_key_eager_and_returns_an_eager_result(monkeypatch, small):
    """The capture call's eager check ran outside the fallback: an out-of-memory error there reached the user."""
    _graphs(monkeypatch, small, "var-d16")
    kw = gen_kwargs(2, seed=4)
    want = _eager(small, "var-d16", kw)
    small.autoregressive_infer_cfg(**kw)
    engine = getattr(small, _ATTR).engine
    real, runs = engine.run_eager, []

    def run_eager(*a, **k):
        runs.append(1)
        if len(runs) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return real(*a, **k)

    monkeypatch.setattr(engine, "run_eager", run_eager)
    with pytest.warns(GraphFallbackWarning, match="eager reference run beside the new graphs failed"):
        got = small.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, want) and len(runs) == 2
    assert "graphs off for this key" in stagevar.last_report(small).note
    small.autoregressive_infer_cfg(**kw)
    assert stagevar.last_report(small).executor == "eager"


@pytest.mark.parametrize("first", [0, 3, 5])
def test_an_inexact_replay_names_the_first_scale_and_tensor_that_differ(monkeypatch, small, first):
    _graphs(monkeypatch, small, "var-d16", perturb=True, perturb_from=first)
    kw = gen_kwargs(2, seed=0)
    small.autoregressive_infer_cfg(**kw)
    with pytest.warns(GraphFallbackWarning, match=rf"differs from the eager call \(torch.equal\) at scale {first}: final "
                                                  rf"tensor\[0\] \(\d+ of \d+ values, max \|diff\|"):
        small.autoregressive_infer_cfg(**kw)


def test_graphs_are_dropped_after_their_replays_have_run(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16", max_keys=1)
    events = []
    backend.wait = lambda device: events.append("wait")
    real_release = backend.release
    backend.release = lambda: (events.append("release"), real_release())
    for B in (1, 1, 2, 2):  # the B=2 key evicts the captured B=1 key
        small.autoregressive_infer_cfg(**gen_kwargs(B, seed=0))
    assert events[:2] == ["wait", "release"]
    stagevar.release_graphs(small)
    assert events[-2:] == ["wait", "release"]


def test_torch_versions_without_capture_safe_sampling_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ex, "_torch_version", lambda: (2, 5))
    assert "graphs need torch >= 2.6" in ex.CudaGraphBackend().unavailable(torch.device("cuda"))
    monkeypatch.setattr(ex, "_torch_version", lambda: (2, 14))  # registers generators itself: no method needed
    monkeypatch.delattr(torch.cuda.CUDAGraph, "register_generator_state", raising=False)
    assert ex.CudaGraphBackend().unavailable(torch.device("cuda")) is None
    monkeypatch.setattr(ex, "_torch_version", lambda: (2, 10))
    assert "no graph-safe generators" in ex.CudaGraphBackend().unavailable(torch.device("cuda"))
    assert ex._torch_version() == (2, 10)


# ------------------------------------------------------------------------------------------
# One pool per device, shared by every key; how many keys are kept.
def test_every_key_captures_into_one_shared_pool_dropped_with_the_last_graphs(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16", max_keys=3)
    pools = []
    real_new_pool = backend.new_pool
    backend.new_pool = lambda device: pools.append(real_new_pool(device)) or pools[-1]
    captured_pools = []
    real_capture = backend.capture
    backend.capture = lambda fn, pool, *a: captured_pools.append(pool) or real_capture(fn, pool, *a)
    for B in (1, 2, 3):
        for _ in range(2):
            small.autoregressive_infer_cfg(**gen_kwargs(B))
    assert len(pools) == 1 and set(map(id, captured_pools)) == {id(pools[0])}
    ex_ = _executor(small)
    assert [c["captures"] for c in ex_.counts().values()] == [1, 1, 1]
    stagevar.release_graphs(small)
    assert ex_._pools == {}
    for _ in range(2):
        small.autoregressive_infer_cfg(**gen_kwargs(1))
    assert len(pools) == 2  # a new pool after the last graphs went


def test_a_failed_capture_leaves_no_pool_behind(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16", fail_capture=True)
    with pytest.warns(GraphFallbackWarning):
        for _ in range(2):
            small.autoregressive_infer_cfg(**gen_kwargs(2))
    assert _executor(small)._pools == {} and backend.released >= 1


def test_max_keys_argument(monkeypatch, small):
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend(small))
    stagevar.accelerate(small, "var-d16", execution="graphs", max_keys=3)
    assert _executor(small).max_keys == 3
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="max_keys"):
            stagevar.accelerate(small, "none", execution="graphs", max_keys=bad)
        assert _executor(small).max_keys == 3 and stagevar.current_config(small).name == "var-d16"
    with pytest.raises(ValueError, match="max_keys"):
        stagevar.accelerate(reference_var("tiny"), "none", execution="eager", max_keys=0)


def test_max_keys_none_keeps_what_free_memory_allows(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16")
    ex_ = _executor(small)
    ex_.max_keys = None
    grown = [0]

    def reserved(device):  # each capture grows the pool by 100 bytes
        return grown[0]

    real_capture = backend.capture

    def capture(*a):
        grown[0] += 100 // len(small.patch_nums) + 1
        return real_capture(*a)

    backend.reserved, backend.capture = reserved, capture
    backend.free = lambda device: 350  # room for three keys of ~100 bytes
    assert ex_.key_limit(torch.device("cpu")) == ex.AUTO_MAX_KEYS
    for B in (1, 2, 3, 4, 5):
        for _ in range(2):
            small.autoregressive_infer_cfg(**gen_kwargs(B))
    assert ex_.key_limit(torch.device("cpu")) == 3
    assert len(ex_.keys) == 3 and [k[2][0] for k in ex_.keys] == [("B", 3), ("B", 4), ("B", 5)]
    assert all(c["pool_bytes"] > 0 for c in ex_.counts().values())


def test_an_empty_graph_fails_a_computed_scale_and_is_skipped_for_an_idle_one(monkeypatch, small):
    """A skipped last scale records no kernel (there is no next input to build): nothing to replay.
    A computed scale that records nothing was captured on the wrong stream: the key goes eager."""
    backend = _graphs(monkeypatch, small, "skip-last-2")
    real_capture = backend.capture
    last = len(small.patch_nums) - 1
    scales = []
    real_run_scale = stagevar.engine.Engine.run_scale
    monkeypatch.setattr(stagevar.engine.Engine, "run_scale",
                        lambda self, call, p: scales.append(p.index) or real_run_scale(self, call, p))

    def empty_for_last(fn, pool, generators, bindings, device):
        graph = real_capture(fn, pool, generators, bindings, device)
        if scales[-1] == last:
            raise ex.EmptyGraphError("the captured CUDA graph is empty (test)")
        return graph

    backend.capture = empty_for_last
    kw = gen_kwargs(2, seed=0)
    want = small.autoregressive_infer_cfg(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphFallbackWarning)
        got = small.autoregressive_infer_cfg(**kw)
        assert stagevar.last_report(small).executor == "graphs" and torch.equal(got, want)
        graphs = _executor(small)._entries[_executor(small).keys[0]].graphs
        assert graphs[-1] is None and all(g is not None for g in graphs[:-1])
        assert torch.equal(small.autoregressive_infer_cfg(**kw), want)  # replayed, the idle scale passed over

    stagevar.accelerate(small, "var-d16", execution="graphs", capture_after=2, text_buckets=())
    backend.capture = lambda *a: (_ for _ in ()).throw(ex.EmptyGraphError("the captured CUDA graph is empty (test)"))
    small.autoregressive_infer_cfg(**kw)
    with pytest.warns(GraphFallbackWarning, match="empty"):
        got = small.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, _eager(small, "var-d16", kw))


# ------------------------------------------------------------------------------------------
# Bookkeeping: what a key holds, what a replay refreshes, what copies and re-configuration do.
def test_autocast_state_is_part_of_the_key(monkeypatch, small):
    _graphs(monkeypatch, small, "var-d16", max_keys=4)
    kw = gen_kwargs(2, seed=1)
    for _ in range(2):
        small.autoregressive_infer_cfg(**kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        small.autoregressive_infer_cfg(**kw)
        assert "first call" in stagevar.last_report(small).note
        small.autoregressive_infer_cfg(**kw)
        got = small.autoregressive_infer_cfg(**kw)
        assert stagevar.last_report(small).executor == "graphs"
        assert torch.equal(got, _eager(small, "var-d16", kw))
    assert len(_executor(small).keys) == 2


def test_a_sampler_replaced_on_the_model_module_is_part_of_the_key(monkeypatch, small):
    import sys

    _graphs(monkeypatch, small, "var-d16", max_keys=4)
    kw = gen_kwargs(2, seed=1)
    for _ in range(2):
        small.autoregressive_infer_cfg(**kw)
    module = sys.modules[type(small).__module__]
    real = module.sample_with_top_k_top_p_
    calls = []
    monkeypatch.setattr(module, "sample_with_top_k_top_p_", lambda *a, **k: calls.append(1) or real(*a, **k))
    small.autoregressive_infer_cfg(**kw)
    assert "first call" in stagevar.last_report(small).note and calls  # a new key, run with the new sampler
    assert len(_executor(small).keys) == 2


def test_integer_inputs_are_refreshed_equal_totals_other_splits(monkeypatch):
    """Infinity without CFG keeps the caller's cu_seqlens_k (int32) as an input: texts of 3 + 5 and
    5 + 3 tokens share one key (same shapes, same longest text), and a replay must read the new
    offsets, not the captured ones (2 + 5 is another key: another total)."""
    from test_infinity import call_kwargs

    bundle = reference_infinity("tiny")
    m = bundle.model
    _graphs(monkeypatch, m, "none")
    words = "a red fox runs over the deep snow".split()
    K = len(bundle.schedule("1:1"))
    kws = [call_kwargs(bundle, 2, seed=s, cfg=1.0, label_B_or_BLT=bundle.encode([" ".join(words[:a]), " ".join(words[:b])]))
           for s, (a, b) in enumerate([(3, 5), (3, 5), (5, 3), (2, 5), (5, 3)])]
    assert all(kw["cfg_list"] == [1.0] * K for kw in kws)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphFallbackWarning)
        got = [m.autoregressive_infer_cfg(**kw)[2] for kw in kws]
    assert len(_executor(m).keys) == 2 and stagevar.last_report(m).executor == "graphs"
    assert max(c["replays"] for c in _executor(m).counts().values()) == 2  # 3 + 5 captured, 5 + 3 replayed twice
    for g, kw in zip(got, kws):
        assert torch.equal(g, _eager(m, "none", kw)[2])


def test_execution_graphs_refuses_a_reducer_that_cannot_be_captured(monkeypatch, small):
    _graphs(monkeypatch, small, "var-d16")
    config = stagevar.preset("var-d16").replace(reducer="orthogonal", name="orth")
    stagevar.accelerate(small, config, execution="graphs")
    with pytest.raises(GraphsUnavailableError, match="orthogonal"):
        small.autoregressive_infer_cfg(**gen_kwargs(2, seed=0))
    stagevar.accelerate(small, config, execution="auto")
    small.autoregressive_infer_cfg(**gen_kwargs(2, seed=0))
    rep = stagevar.last_report(small)
    assert rep.executor == "eager" and "orthogonal" in rep.note


def test_a_copy_keeps_its_execution_mode(monkeypatch, small):
    _graphs(monkeypatch, small, "var-d16")
    stagevar.accelerate(small, "var-d16", execution="graphs", capture_after=4, max_keys=3)
    twin = copy.deepcopy(small)
    a, b = _executor(small), _executor(twin)
    assert isinstance(b, ex.GraphExecutor) and b is not a
    assert (b.execution, b.capture_after, b.max_keys) == ("graphs", 4, 3)


def test_reaccelerating_frees_the_old_graphs(monkeypatch, small):
    backend = _graphs(monkeypatch, small, "var-d16")
    kw = gen_kwargs(2, seed=0)
    for _ in range(2):
        small.autoregressive_infer_cfg(**kw)
    old = _executor(small)
    assert old.keys and backend.released == 0
    stagevar.accelerate(small, "none", execution="graphs", capture_after=2)
    assert old.keys == [] and old._pools == {} and backend.released >= 1


@pytest.mark.parametrize("bad", [1, 0, True, 2.5, "3"])
def test_capture_after_is_checked_under_every_execution(small, bad):
    for execution in ("eager", "auto"):
        with pytest.raises(ValueError, match="capture_after"):
            stagevar.accelerate(small, "var-d16", execution=execution, capture_after=bad)
        assert not stagevar.is_accelerated(small)


def test_the_executor_constructors_check_execution_and_keep_the_given_backend():
    with pytest.raises(ValueError, match=r"^execution='eager': expected 'auto' or 'graphs'$"):
        ex.GraphExecutor("eager")
    backend = ReplayingBackend()
    for execution in ("auto", "graphs"):
        made = ex.make_executor(execution, torch.device("cpu"), backend=backend, max_keys=3, capture_after=4)
        assert isinstance(made, ex.GraphExecutor) and made.backend is backend
        assert (made.execution, made.max_keys, made.capture_after) == (execution, 3, 4)


@pytest.mark.parametrize("version, want", [("2.13.0+cpu", (2, 13)), ("2.6.0a0+git1234", (2, 6)), ("2.10.1", (2, 10)),
                                           ("3.0.0rc1", (3, 0))])
def test_torch_version_is_major_and_minor(monkeypatch, version, want):
    monkeypatch.setattr(torch, "__version__", version)
    assert ex._torch_version() == want


def test_owned_inputs_are_copies_in_the_same_containers():
    """The executor's copies of a call's tensors keep every container's type (a namedtuple too)
    and a tensor two fields share stays shared."""
    import collections
    import dataclasses

    Pair = collections.namedtuple("Pair", "a b")

    @dataclasses.dataclass
    class St:
        g_seed: int
        rng: object
        pair: Pair
        items: list
        table: dict
        plain: tuple

    t, u = torch.arange(3.0), torch.ones(2)
    st = St(g_seed=0, rng=None, pair=Pair(t, 5), items=[u, 1], table={"k": t}, plain=(u, "x"))
    ex._own_inputs(st)
    assert type(st.pair) is Pair and st.pair.b == 5 and torch.equal(st.pair.a, t) and st.pair.a is not t
    assert st.items[0] is not u and torch.equal(st.items[0], u) and st.items[1] == 1
    assert st.table["k"] is st.pair.a and st.plain[0] is st.items[0] and st.plain[1] == "x"


def test_the_signature_of_a_set_is_its_members_whatever_their_types_and_order():
    a, b = {1, "a", (2, None)}, set()
    for v in [(2, None), "a", 1]:
        b.add(v)
    assert ex._signature(a) == ex._signature(b) == ex._signature(frozenset(a))
    assert ex._signature({1, "a"}) != ex._signature({1, "b"})
