"""stagevar.api under odd use and bad input: each test fails on a specific fault (named in its docstring)."""
import copy
import inspect
import io
import pickle

import pytest
import torch
from conftest import ScaleInputs, edited_copy, gen_kwargs

import stagevar
import stagevar.lowrank as lowrank
import stagevar.models.var as ref_var_module
from stagevar import ConfigError, StageVARConfig
from stagevar.api import _ATTR
from stagevar.engine import projection_seed
from stagevar.models import reference_var


# ------------------------------------------------------------------------------------------
# Odd use and bad input: each test here fails on a specific fault (named in its docstring).
def test_pickling_an_accelerated_model_is_refused_with_a_way_out(small):
    """A pickled twin would say it is accelerated and run the baseline."""
    stagevar.accelerate(small, "var-d16")
    for save in (pickle.dumps, lambda m: torch.save(m, io.BytesIO())):
        with pytest.raises(TypeError, match=r"restore\(model\) first.*StageVARConfig.load"):
            save(small)
    assert stagevar.is_accelerated(small)
    stagevar.restore(small)
    twin = pickle.loads(pickle.dumps(small))
    kw = gen_kwargs(2)
    assert torch.equal(twin.autoregressive_infer_cfg(**kw), small.autoregressive_infer_cfg(**kw))


def test_a_deepcopy_drives_its_own_blocks(small):
    """The twin's engine must run the twin's blocks, not the original's: give the twin other weights."""
    stagevar.accelerate(small, "var-d16")
    twin = copy.deepcopy(small)
    assert getattr(twin, _ATTR).engine.adapter.model is twin
    with torch.no_grad():
        for p in twin.blocks.parameters():
            p.mul_(1.5)
    kw = gen_kwargs(2, seed=3)
    got_twin, got = twin.autoregressive_infer_cfg(**kw), small.autoregressive_infer_cfg(**kw)
    assert not torch.equal(got_twin, got)
    stagevar.restore(twin)
    with stagevar.accelerated(twin, "var-d16"):
        assert torch.equal(twin.autoregressive_infer_cfg(**kw), got_twin)


_UPSTREAM_VAR_CALL = vars(ref_var_module.VAR)["autoregressive_infer_cfg"]


@torch.no_grad()
def _fork_call(self, B, label_B=None, g_seed=None, cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, temperature=1.0):
    return _UPSTREAM_VAR_CALL(self, B, label_B, g_seed=g_seed, cfg=cfg, top_k=top_k, top_p=top_p,
                              more_smooth=more_smooth)


# A fork (an edited copy of the upstream class) whose entry point takes one more argument stagevar's loop
# does not implement.
_ForkVAR = edited_copy(ref_var_module.VAR, "_ForkVAR", autoregressive_infer_cfg=_fork_call)


def test_unknown_call_arguments_are_refused_by_name():
    """Arguments the adapter does not consume were dropped silently, even under 'none'."""
    fork = reference_var("tiny")
    fork.__class__ = _ForkVAR
    kw = gen_kwargs(2)
    want = fork.autoregressive_infer_cfg(**kw)
    stagevar.accelerate(fork, "none")
    assert torch.equal(fork.autoregressive_infer_cfg(**kw), want)  # the default value is fine
    assert torch.equal(fork.autoregressive_infer_cfg(**kw, temperature=1.0), want)
    with pytest.raises(TypeError, match=r"does not implement temperature=0\.7.*restore"):
        fork.autoregressive_infer_cfg(**kw, temperature=0.7)
    assert all(b.attn.cached_k is None for b in fork.blocks)


def test_every_parameter_of_the_reference_entry_points_is_consumed_or_refused():
    """Walk the signatures: each parameter is read by the adapter, or a non-default value raises."""
    var = reference_var("tiny")
    stagevar.accelerate(var, "none")
    adapter = getattr(var, _ATTR).engine.adapter
    params = list(inspect.signature(type(var).autoregressive_infer_cfg).parameters)[1:]
    assert set(params) <= adapter.consumed, "a reference VAR parameter is neither consumed nor refused"


def test_full_rank_warning_says_what_runs(small):
    """Full rank with a Gaussian projection was announced as 'intact' while the output differed."""
    kw = gen_kwargs(2, seed=1)
    want = small.autoregressive_infer_cfg(**kw)
    with pytest.warns(stagevar.NoAccelerationWarning, match="mixes tokens: the output differs"):
        stagevar.accelerate(small, StageVARConfig(refine_start=-2, branch="both", rank_ratio=1.0, name="t"))
    assert not torch.equal(small.autoregressive_infer_cfg(**kw), want)
    with pytest.warns(stagevar.NoAccelerationWarning, match="reproduces the intact scales"):
        stagevar.accelerate(small, StageVARConfig(refine_start=-2, branch="both", rank_ratio=1.0,
                                                  reducer="sample", name="t"))
    with pytest.warns(stagevar.NoAccelerationWarning, match="every scale runs intact"):
        stagevar.accelerate(small, StageVARConfig(refine_start=-2, branch="both", name="t"))


def test_restore_inside_a_scoped_override(small):
    """accelerate, then `with accelerated(v, 'none'): restore(v)` raised AttributeError on exit."""
    stagevar.accelerate(small, "var-d16")
    with stagevar.accelerated(small, "none"):
        stagevar.restore(small)
    assert not stagevar.is_accelerated(small)
    with stagevar.accelerated(small, "none"):
        stagevar.restore(small)
    assert not stagevar.is_accelerated(small)


@pytest.mark.parametrize("edit", ["drop", "append"])
def test_editing_blocks_after_accelerate_is_named(small, edit):
    stagevar.accelerate(small, "var-d16")
    if edit == "drop":
        del small.blocks[-1]
    else:
        small.blocks.append(copy.deepcopy(small.blocks[0]))
    with pytest.raises(RuntimeError, match=r"has [35] transformer blocks now but had 4.*accelerate\(model, config\) again"):
        small.autoregressive_infer_cfg(**gen_kwargs(1))
    stagevar.accelerate(small, "var-d16")
    small.autoregressive_infer_cfg(**gen_kwargs(1))


def test_a_torch_compile_wrapper_is_accepted(small):
    compiled = torch.compile(small)
    kw = gen_kwargs(2, seed=5)
    want = small.autoregressive_infer_cfg(**kw)
    with pytest.warns(UserWarning, match="torch.compile wrapper"):
        assert stagevar.accelerate(compiled, "none") is compiled
    assert stagevar.is_accelerated(compiled) and stagevar.is_accelerated(small)
    assert torch.equal(compiled.autoregressive_infer_cfg(**kw), want)
    assert stagevar.last_report(compiled).config_name == "none"
    stagevar.restore(compiled)
    assert not stagevar.is_accelerated(small)


def test_a_sampler_replaced_after_accelerate_is_used(small, monkeypatch):
    """The model's module-level sampling helper was looked up once, at accelerate time."""
    stagevar.accelerate(small, "none")
    calls = []
    real = ref_var_module.sample_with_top_k_top_p_

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ref_var_module, "sample_with_top_k_top_p_", spy)
    got = small.autoregressive_infer_cfg(**gen_kwargs(2))
    assert len(calls) == len(small.patch_nums)
    stagevar.restore(small)
    assert torch.equal(got, small.autoregressive_infer_cfg(**gen_kwargs(2)))


def test_no_scale_at_all_is_not_an_error():
    """An empty plan (a call that runs no scale) must not crash the loop's setup."""
    from stagevar.plan import resolve_plan

    assert resolve_plan(stagevar.preset("none"), [], 2) == []
    with pytest.warns(stagevar.NoAccelerationWarning, match="runs no scale"):
        assert resolve_plan(stagevar.preset("var-d16"), [], 2) == []


# -- features a broken line would silently switch off -------------------------------------------
def test_projection_draws_follow_the_call_seed(small, monkeypatch):
    """The projection generator must be seeded from g_seed (not only the config's seed)."""
    assert projection_seed(1, 0) != projection_seed(2, 0) != projection_seed(None, 0)
    drawn = []
    real = lowrank.projection_matrix

    def spy(*a, **k):
        Q = real(*a, **k)
        drawn.append(Q.clone())
        return Q

    monkeypatch.setattr(lowrank, "projection_matrix", spy)
    stagevar.accelerate(small, StageVARConfig(refine_start=-2, rank_ratio=0.3, name="t"))
    runs = []
    for seed in (1, 2, 1):
        drawn.clear()
        small.autoregressive_infer_cfg(**gen_kwargs(2, seed=seed))
        runs.append(list(drawn))
    assert runs[0] and all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))
    assert not any(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))


def test_the_configs_seed_changes_the_low_rank_draw_and_not_the_sampling(small, monkeypatch):
    """Two configs that differ only in ``seed``: other projections for the same g_seed (so other
    images), the same projections for the same config seed."""
    drawn = []
    real = lowrank.projection_matrix
    monkeypatch.setattr(lowrank, "projection_matrix", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    base = StageVARConfig(refine_start=-2, rank_ratio=0.3, name="t")
    runs, images = [], []
    for seed in (0, 1, 0):
        drawn.clear()
        with stagevar.accelerated(small, base.replace(seed=seed)):
            images.append(small.autoregressive_infer_cfg(**gen_kwargs(2, seed=5)))
        runs.append(list(drawn))
    assert runs[0] and all(torch.equal(a, b) for a, b in zip(runs[0], runs[2])) and torch.equal(images[0], images[2])
    assert not any(torch.equal(a, b) for a, b in zip(runs[0], runs[1])) and not torch.equal(images[0], images[1])
    assert projection_seed(5, 0) != projection_seed(5, 1)


def test_skipping_a_middle_scale_feeds_the_next_scale_what_was_generated(small):
    """A skipped middle scale must hand the next scale the accumulated latent, not zeros."""
    K = len(small.patch_nums)

    stagevar.accelerate(small, StageVARConfig(refine_start=None, skip=(K - 3,), name="t"))
    engine = getattr(small, _ATTR).engine
    obs = ScaleInputs()
    engine.observe(obs, **gen_kwargs(2, seed=0))
    nxt = K - 2
    m = small
    begin = sum(pn * pn for pn in m.patch_nums[:nxt])
    lvl_pos = (m.lvl_embed(m.lvl_1L) + m.pos_1LC)[:, begin:begin + m.patch_nums[nxt] ** 2]
    zeros_input = m.word_embed(torch.zeros(1, m.patch_nums[nxt] ** 2, m.Cvae)) + lvl_pos
    assert K - 3 not in obs.x and nxt in obs.x
    assert (obs.x[nxt] - zeros_input).abs().amax() > 1e-3


def test_fastvar_selection_keeps_the_tokens_farthest_from_the_mean(small, monkeypatch):
    x = torch.randn(2, 30, 8)
    idx = lowrank.farthest_from_mean_indices(x, 7)
    d = (x - x.mean(1, keepdim=True)).pow(2).sum(-1)
    for row in range(2):
        kept = set(idx[row].tolist())
        assert min(d[row, sorted(kept)]) >= max(d[row, [i for i in range(30) if i not in kept]])
    seen = []
    real = lowrank.farthest_from_mean_indices
    monkeypatch.setattr(lowrank, "farthest_from_mean_indices", lambda x, r: seen.append(r) or real(x, r))
    stagevar.accelerate(small, StageVARConfig(refine_start=-2, branch="both", rank_ratio=0.4, reducer="fastvar", name="t"))
    small.autoregressive_infer_cfg(**gen_kwargs(1))
    assert len(seen) == 2 * len(small.blocks)


def test_orthogonal_projection_runs_through_the_engine(small, monkeypatch):
    seen = []
    real = lowrank.projection_matrix

    def spy(M, r, kind, *a, **k):
        Q = real(M, r, kind, *a, **k)
        seen.append((kind, Q))
        return Q

    monkeypatch.setattr(lowrank, "projection_matrix", spy)
    stagevar.accelerate(small, StageVARConfig(refine_start=-2, rank_ratio=0.3, reducer="orthogonal", name="t"))
    small.autoregressive_infer_cfg(**gen_kwargs(1))
    assert seen and all(kind == "orthogonal" for kind, _ in seen)
    for _, Q in seen:
        torch.testing.assert_close(Q.t() @ Q, torch.eye(Q.shape[1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache_condition", [True, False])
def test_cache_condition_computes_each_modulation_once_per_condition(small, cache_condition):
    """Exactness alone holds whether or not the cache is applied: count the projections."""
    counts = [0] * len(small.blocks)
    handles = [b.ada_lin.register_forward_hook(lambda *a, j=j: counts.__setitem__(j, counts[j] + 1))
               for j, b in enumerate(small.blocks)]
    stagevar.accelerate(small, StageVARConfig(refine_start=-2, branch="uncond", cache_condition=cache_condition,
                                              name="t"))
    small.autoregressive_infer_cfg(**gen_kwargs(2))
    for h in handles:
        h.remove()
    K = len(small.patch_nums)
    # cached: once for the 2B rows, once after the cut to one branch; uncached: once per scale
    assert counts == [2 if cache_condition else K] * len(small.blocks)


def test_warnings_point_at_the_users_line():
    """Whether raised by accelerate or inside a generation call, a stagevar warning names the caller's file."""
    from test_infinity import call_kwargs

    from stagevar.models import reference_infinity, reference_var

    cfg = StageVARConfig(refine_start=-2, branch="both", name="accelerates-nothing")
    with pytest.warns(stagevar.NoAccelerationWarning) as rec:
        stagevar.accelerate(reference_var("tiny"), cfg)
    assert [w.filename for w in rec] == [__file__]
    with pytest.warns(stagevar.NoAccelerationWarning) as rec:
        with stagevar.accelerated(reference_var("tiny"), cfg):  # through contextlib
            pass
    assert [w.filename for w in rec] == [__file__]
    b = reference_infinity("tiny")
    stagevar.accelerate(b.model, "infinity-2b")
    with pytest.warns(stagevar.NoAccelerationWarning, match="runs no scale") as rec:
        b.model.autoregressive_infer_cfg(**call_kwargs(b, 1, trunk_scale=0))
    assert [w.filename for w in rec] == [__file__]


def test_engine_seam_for_the_tools():
    """build_engine / attach / detach / engine_of: what the runner and calibration use to switch a model
    between engines without freeing their graphs."""
    from stagevar import api
    from stagevar.models import reference_var

    a, b = reference_var("tiny"), reference_var("tiny")
    want = a.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0)
    assert api.engine_of(a) is None and api.detach(a) is None
    first = api.build_engine(a, "var-d16")
    assert not stagevar.is_accelerated(a)  # built, not installed
    with pytest.raises(ValueError, match="drives another model"):
        api.attach(a, api.build_engine(b, "var-d16"))
    assert not stagevar.is_accelerated(a)  # a refused attach changes nothing
    assert api.attach(a, first) is None and api.engine_of(a) is first
    other = api.build_engine(a, "none")
    released = []  # attach and detach hand the engine back unreleased: the caller owns its graphs
    for e in (first, other):
        e.executor.release = lambda e=e: released.append(e)
    assert api.attach(a, other) is first and stagevar.current_config(a) == stagevar.preset("none")
    assert api.detach(a) is other and not stagevar.is_accelerated(a) and not released
    assert "autoregressive_infer_cfg" not in vars(a)  # the class method again, exactly
    assert torch.equal(a.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0), want)



# ------------------------------------------------------------------------------------------
def test_accelerate_rejects_bad_input_and_leaves_model_usable():
    var = reference_var("tiny")
    want = var.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0)
    with pytest.raises(ConfigError, match="outside this model's schedule of 4 scales"):
        stagevar.accelerate(var, StageVARConfig(refine_start=-7))
    with pytest.raises(ConfigError, match="unit_blocks=5 exceeds the model's 2 blocks"):
        stagevar.accelerate(var, StageVARConfig(unit_blocks=5))
    with pytest.raises(ConfigError, match="must be a StageVARConfig"):
        stagevar.accelerate(var, 3)
    assert not stagevar.is_accelerated(var) and "autoregressive_infer_cfg" not in var.__dict__
    assert torch.equal(var.autoregressive_infer_cfg(B=1, label_B=1, g_seed=0), want)  # exactly as before


def test_unsupported_objects_are_named():
    import torch.nn as nn
    with pytest.raises(stagevar.UnsupportedModelError, match="expects a loaded torch.nn.Module"):
        stagevar.accelerate("var-d16")
    with pytest.raises(stagevar.UnsupportedModelError, match=r"Linear is not a model stagevar supports.*missing patch_nums"):
        stagevar.accelerate(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------
# One namespace of names, and the package's public surface.
def test_accelerate_by_name_runs_fastvars_pruning(monkeypatch):
    """accelerate(model, "fastvar") is FastVAR's pruning: the middle blocks of the last two scales keep
    the tokens farthest from the mean, both branches run, the outer blocks run intact."""
    small = reference_var("small")  # 4 blocks: round(0.1 * 4) = 0 .. round(0.85 * 4) = 3 pruned
    seen = []
    real = lowrank.farthest_from_mean_indices
    monkeypatch.setattr(lowrank, "farthest_from_mean_indices", lambda x, r: seen.append(r) or real(x, r))
    stagevar.accelerate(small, "fastvar")
    small.autoregressive_infer_cfg(**gen_kwargs(2))
    scales = stagevar.last_report(small).scales
    assert [s.rows for s in scales] == [4] * len(scales)
    assert scales[-1].tokens == (33, 33, 33, 64) and scales[-2].tokens == (22, 22, 22, 36)  # 0.5 * 64, 0.6 * 36
    assert seen == [22] * 3 + [33] * 3
    assert stagevar.current_config(small) == stagevar.preset("fastvar")


def test_accelerate_takes_every_name_and_says_which_it_did_not_know():
    small = reference_var("small")
    stagevar.accelerate(small, "cfg-only")
    assert stagevar.current_config(small) == stagevar.preset("cfg-only", small)
    assert stagevar.current_config(small).branch == "uncond" and not stagevar.current_config(small).rank_ratios
    stagevar.accelerate(small, "skip-last-1")
    assert stagevar.current_config(small).skip == (-1,)
    stagevar.restore(small)
    with pytest.raises(ConfigError, match="'baseline' is the model's own unpatched call, not a config"):
        stagevar.accelerate(small, "baseline")
    with pytest.raises(ConfigError, match="unknown config 'fast-var'; did you mean 'fastvar'"):
        stagevar.accelerate(small, "fast-var")
    with pytest.raises(ConfigError, match=r"To load a config file, pass stagevar.StageVARConfig.load\(path\)"):
        stagevar.accelerate(small, "mine.json")
    assert not stagevar.is_accelerated(small)


def test_import_stagevar_loads_neither_the_tools_nor_the_reference_models():
    import subprocess
    import sys

    code = ("import sys, stagevar; loaded = [m for m in sys.modules if m.startswith(('stagevar.tools', 'stagevar.models'))];"
            " print(loaded); assert not loaded; stagevar.Calibration; assert 'stagevar.tools.calibrate' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_public_name_shadows_a_module():
    import importlib
    import importlib.util

    shadowing = [name for name in stagevar.__all__ if importlib.util.find_spec(f"stagevar.{name}") is not None]
    assert shadowing == []
    for module in ("presets", "report"):  # `import stagevar.X as m` gives the module, not a function
        assert getattr(stagevar, module) is importlib.import_module(f"stagevar.{module}")
    assert callable(stagevar.preset_names) and callable(stagevar.last_report)


# ------------------------------------------------------------------------------------------
# Copies, threads, interrupts, subclasses and wrappers (reliability, round three).
def test_restore_on_a_deepcopy_gives_the_copy_its_own_method_back(small):
    """restore() on a copy installed a bare sentinel object as its generation method."""
    stagevar.accelerate(small, "var-d16")
    twin = copy.deepcopy(small)
    stagevar.restore(twin)
    assert "autoregressive_infer_cfg" not in vars(twin) and not stagevar.is_accelerated(twin)
    fresh = reference_var("small")
    twin.load_state_dict(fresh.state_dict())
    assert torch.equal(twin.autoregressive_infer_cfg(**gen_kwargs(2)), fresh.autoregressive_infer_cfg(**gen_kwargs(2)))
    assert stagevar.is_accelerated(small)  # the original keeps its patch


def test_accelerate_from_two_threads_attaches_once(small, monkeypatch):
    """attach was an unsynchronised check-then-set: two threads could both find the model unpatched."""
    import threading
    import time

    import stagevar.api as api

    real, checks = api._refuse_bypassed_entry, []

    def slow_check(model, entry):  # widens the window between "not patched" and patching
        checks.append(threading.get_ident())
        time.sleep(0.05)
        real(model, entry)

    monkeypatch.setattr(api, "_refuse_bypassed_entry", slow_check)
    threads = [threading.Thread(target=stagevar.accelerate, args=(small, name)) for name in ("var-d16", "cfg-only")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checks) == 1  # the second thread found the patch and re-configured
    assert stagevar.current_config(small).name in ("var-d16", "cfg-only")
    stagevar.restore(small)
    assert "autoregressive_infer_cfg" not in vars(small) and not stagevar.is_accelerated(small)


def _slow_first_scale(monkeypatch, started):
    """Engine.run_scale that, at scale 0 of the first call, says so and waits a moment."""
    import time

    from stagevar.engine import Engine

    real = Engine.run_scale

    def run_scale(self, call, p):
        if p.index == 0 and not started.is_set():
            started.set()
            time.sleep(0.2)
        return real(self, call, p)

    monkeypatch.setattr(Engine, "run_scale", run_scale)


def test_two_threads_calling_one_model_run_one_after_the_other(small, monkeypatch):
    """Calls interleaved on the shared KV caches: one returned a wrong image, with no error."""
    import threading

    stagevar.accelerate(small, "var-d16")
    want = [small.autoregressive_infer_cfg(**gen_kwargs(2, seed=s)) for s in (1, 2)]
    started, got = threading.Event(), {}
    _slow_first_scale(monkeypatch, started)

    def call(seed):
        got[seed] = small.autoregressive_infer_cfg(**gen_kwargs(2, seed=seed))

    first = threading.Thread(target=call, args=(1,))
    first.start()
    started.wait()
    call(2)  # overlaps the first call: it waits for it
    first.join()
    assert torch.equal(got[1], want[0]) and torch.equal(got[2], want[1])


def test_a_model_accelerated_without_waiting_refuses_an_overlapping_call(small, monkeypatch):
    import threading

    stagevar.accelerate(small, "var-d16", wait=False)
    started = threading.Event()
    _slow_first_scale(monkeypatch, started)
    first = threading.Thread(target=small.autoregressive_infer_cfg, kwargs=gen_kwargs(1))
    first.start()
    started.wait()
    with pytest.raises(stagevar.ModelBusyError, match="another thread is generating with this VAR"):
        small.autoregressive_infer_cfg(**gen_kwargs(1))
    first.join()
    small.autoregressive_infer_cfg(**gen_kwargs(1))  # free again
    with pytest.raises(TypeError, match="wait must be True or False"):
        stagevar.accelerate(small, "var-d16", wait="no")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_during_a_calls_setup_leaves_the_model_clean(small, monkeypatch, interrupt):
    """Setup ran outside the cleanup: caches stayed on, conditions stayed wrapped (state_dict keys renamed)."""
    keys = list(small.state_dict())
    stagevar.accelerate(small, "var-d16")

    def boom(*a, **k):  # begin has switched the caches on and wrapped ada_lin by the time it calls this
        raise interrupt("interrupted")

    monkeypatch.setattr(small.shared_ada_lin, "forward", boom)
    with pytest.raises(interrupt):
        small.autoregressive_infer_cfg(**gen_kwargs(1))
    assert all(not b.attn.caching for b in small.blocks)
    assert list(small.state_dict()) == keys
    monkeypatch.undo()
    stagevar.restore(small)
    assert list(small.state_dict()) == keys


def test_an_entry_point_stagevar_would_bypass_is_refused(small):
    """A subclass's override and an instance-level wrapper were silently bypassed (under 'none' too)."""
    import functools

    from stagevar.models.var import VAR

    class Forked(VAR):
        def autoregressive_infer_cfg(self, *args, **kwargs):
            return super().autoregressive_infer_cfg(*args, **kwargs).flip(-1)

    forked = reference_var("small")
    forked.__class__ = Forked
    with pytest.raises(stagevar.UnsupportedModelError, match="Forked.autoregressive_infer_cfg overrides "
                                                            "VAR.autoregressive_infer_cfg"):
        stagevar.accelerate(forked, "none")
    assert not stagevar.is_accelerated(forked) and "autoregressive_infer_cfg" not in vars(forked)
    small.autoregressive_infer_cfg = functools.partial(small.autoregressive_infer_cfg, cfg=1.0)
    with pytest.raises(stagevar.UnsupportedModelError, match=r"set on this instance \(partial.*del "
                                                            r"model.autoregressive_infer_cfg"):
        stagevar.accelerate(small)
    assert isinstance(vars(small)["autoregressive_infer_cfg"], functools.partial) and not stagevar.is_accelerated(small)


@pytest.mark.parametrize("B", [2.5, 0, -1, True, torch.tensor(2), "2"])
def test_batch_size_is_checked_like_upstream(small, B):
    """B was coerced with int(): B=2.5 gave two images where the unpatched call raises."""
    stagevar.accelerate(small, "var-d16")
    with pytest.raises(ValueError, match=r"B=.* is not a batch size: pass a positive integer"):
        small.autoregressive_infer_cfg(**dict(gen_kwargs(2), B=B))
    assert all(not b.attn.caching for b in small.blocks)


def test_labels_and_seeds_of_other_integer_types(small):
    import numpy as np

    stagevar.accelerate(small, "var-d16")
    want = small.autoregressive_infer_cfg(**dict(gen_kwargs(2), label_B=3))
    assert torch.equal(small.autoregressive_infer_cfg(**dict(gen_kwargs(2), label_B=np.int64(3))), want)
    assert torch.equal(small.autoregressive_infer_cfg(**dict(gen_kwargs(2), label_B=3, g_seed=np.int32(0))), want)
    for bad, shown in ([[1, 2], r"\[1, 2\] \(a list\)"], [torch.tensor([1.0, 2.0]), r"a \(2,\) torch.float32 tensor"],
                       [torch.tensor([[1, 2]]), r"a \(1, 2\) torch.int64 tensor"], ["3", r"'3' \(a str\)"]):
        with pytest.raises(ValueError, match=r"label_B must be a 1-D integer tensor of B class indices.*; got "
                                             + shown + r"\. For a list: torch.tensor\(labels\)$"):
            small.autoregressive_infer_cfg(**dict(gen_kwargs(2), label_B=bad))
    with pytest.raises(ValueError, match="g_seed=1.5 .* is not a seed: pass an integer, or None"):
        small.autoregressive_infer_cfg(**dict(gen_kwargs(2), g_seed=1.5))


@pytest.mark.parametrize("name", ["restore", "release_graphs", "current_config", "last_report"])
@pytest.mark.parametrize("not_a_model", [42, "model", None, [1, 2]])
def test_functions_taking_a_model_refuse_what_is_not_one(name, not_a_model):
    with pytest.raises(TypeError, match=rf"stagevar\.{name}: model must be the torch\.nn\.Module"):
        getattr(stagevar, name)(not_a_model)
    assert stagevar.is_accelerated(not_a_model) is False  # a question, answered


def test_restore_and_release_graphs_of_a_model_never_accelerated_are_no_ops(small):
    assert stagevar.restore(small) is small and stagevar.release_graphs(small) is small
    assert stagevar.current_config(small) is None
