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

from conftest import gen_kwargs
from graph_fake import ReplayingBackend

VAR_CONFIGS = ["none", "var-d16", "stagevar-tiny-var"]


def _graphs(monkeypatch, model, config, max_keys=2, **fake):
    """Accelerate ``model`` with execution='graphs' on the stand-in backend; returns the backend."""
    backend = ReplayingBackend(model, **fake)
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: backend)
    stagevar.accelerate(model, config, execution="graphs")
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
        stagevar.accelerate(small, "var-d16", execution="graphs")
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


@pytest.mark.parametrize("change", ["B", "cfg", "top_k", "block", "weights_reloaded", "quantizer_reloaded"])
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
    stagevar.accelerate(small, "var-d16", execution="auto")
    for _ in range(3):
        small.autoregressive_infer_cfg(**gen_kwargs(2, seed=None))
    rep = stagevar.last_report(small)
    assert rep.executor == "eager" and "unseeded" in rep.note and backend.captures == 0
    stagevar.accelerate(small, "var-d16", execution="graphs")
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
    with pytest.warns(GraphFallbackWarning, match="replay failed"):
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


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("family", ["var", "infinity"])
@pytest.mark.parametrize("B", [1, 4])
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_graphs_none_equals_unpatched_and_presets_equal_eager(family, B, autocast):
    from test_infinity import PROMPTS, call_kwargs

    dev = torch.device("cuda")
    top = dict(top_k=5, top_p=0.9) if B > 1 else {}  # the filtered sampler captured too
    if family == "var":
        model = reference_var("small", device=dev)
        kws = [gen_kwargs(B, seed=s, label_B=(torch.arange(B, device=dev) + s) % 10, **top) for s in (0, 1, 2)]
        presets = ["var-d16", "stagevar-tiny-var"]
        out = lambda o: o  # noqa: E731
    else:
        bundle = reference_infinity("tiny", device=dev)
        model = bundle.model
        text = bundle.encode((PROMPTS * B)[:B])  # one text length: one key for the three seeds
        kws = [call_kwargs(bundle, B, seed=s, label_B_or_BLT=text, **top) for s in (0, 1, 2)]
        presets = ["infinity-2b", "infinity-2b-paper"]
        out = lambda o: o[2]  # noqa: E731
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if autocast else (lambda: torch.autocast("cuda", enabled=False))
    with ctx():
        want = [out(model.autoregressive_infer_cfg(**kw)) for kw in kws]
        for config in ["none"] + presets:
            stagevar.accelerate(model, config, execution="graphs")
            ref = want if config == "none" else [out(_eager(model, config, kw)) for kw in kws]
            got = [_no_fallback(lambda kw=kw: out(model.autoregressive_infer_cfg(**kw))) for kw in kws]
            assert stagevar.last_report(model).executor == "graphs", stagevar.last_report(model).note
            for g, w in zip(got, ref):
                assert torch.equal(g, w), config
            stagevar.restore(model)


@cuda
@pytest.mark.cuda
def test_cuda_random_labels_replay_as_eager():
    """label_B=None (labels drawn from the call's generator in setup), with a fresh CUDA generator per
    call (the model's rng still on the CPU) and then with the model's own (moved by an unpatched call)."""
    dev = torch.device("cuda")
    model = reference_var("small", device=dev)
    for _ in range(2):
        stagevar.accelerate(model, "var-d16", execution="graphs")
        kws = [dict(gen_kwargs(4, seed=s), label_B=None) for s in (0, 1, 2)]
        got = [_no_fallback(lambda kw=kw: model.autoregressive_infer_cfg(**kw)) for kw in kws]
        assert stagevar.last_report(model).executor == "graphs", stagevar.last_report(model).note
        for g, kw in zip(got, kws):
            assert torch.equal(g, _eager(model, "var-d16", kw))
        stagevar.restore(model)
        model.autoregressive_infer_cfg(**kws[0])  # upstream's own call moves model.rng to the GPU


@cuda
@pytest.mark.cuda
def test_cuda_release_graphs_lowers_reserved_memory():
    dev = torch.device("cuda")
    model = reference_var("small", device=dev)
    stagevar.accelerate(model, "var-d16", execution="graphs")
    kw = gen_kwargs(8, seed=0, label_B=torch.arange(8, device=dev) % 10)
    for _ in range(3):
        _no_fallback(lambda: model.autoregressive_infer_cfg(**kw))
    rep = stagevar.last_report(model)
    assert rep.executor == "graphs" and rep.pool_bytes > 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # what the eager calls left cached, so that only the pool can be freed below
    before = torch.cuda.memory_reserved()
    stagevar.release_graphs(model)
    assert before - torch.cuda.memory_reserved() >= rep.pool_bytes
