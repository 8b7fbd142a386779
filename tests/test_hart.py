"""HART: the text prefix as scale 0, the MaskGIT + diffusion last scale, the global generators, one
CFG branch cut together, low-rank representatives with their own RoPE, and what is refused."""
import numpy as np
import pytest
import torch

import stagevar
from stagevar.config import ConfigError
from stagevar.models import hart as hart_module
from stagevar.models.hart import reference_hart

PROMPTS = ["a red fox in the snow", "a lighthouse on a cliff at dusk over the sea", "cherries", "a b c d e f"]


def call_kwargs(b, B, seed=0, **extra):
    return dict(B=B, **b.encode(PROMPTS[:B]), g_seed=seed, cfg=4.5, **extra)


@pytest.fixture(scope="module")
def small():
    return reference_hart("small")


def _run(model, kw):
    """One call from fixed global generators; returns the images and both global states after it."""
    torch.manual_seed(11)
    np.random.seed(11)
    out = model.autoregressive_infer_cfg(**kw)
    return out, torch.get_rng_state(), np.random.get_state()[1].copy()


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("extra", [{}, dict(more_smooth=True), dict(top_p=0.8), dict(final_stage=1),
                                   dict(g_seed=None), dict(top_k=5)])
def test_none_is_bit_identical_and_draws_the_global_generators_as_upstream(small, B, extra):
    m = small.model
    kw = call_kwargs(small, B, seed=2)
    kw.update(extra)
    want, want_torch, want_np = _run(m, kw)
    with stagevar.accelerated(m, "none"):
        got, got_torch, got_np = _run(m, kw)
    assert torch.equal(got, want)
    assert torch.equal(got_torch, want_torch) and (got_np == want_np).all()


def test_none_is_bit_identical_under_bf16_autocast(small):
    m = small.model
    kw = call_kwargs(small, 2, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _, _ = _run(m, kw)
        with stagevar.accelerated(m, "none"):
            got, _, _ = _run(m, kw)
    assert torch.equal(got, want)


def test_the_schedule_counts_the_text_as_scale_0(small):
    m = small.model
    with stagevar.accelerated(m, "none"):
        _run(m, call_kwargs(small, 1))
        rep = stagevar.last_report(m)
    assert rep.scales[0].hw == (1, m.context_token) and set(rep.scales[0].tokens) == {m.context_token}
    assert [s.hw for s in rep.scales[1:]] == [(pn, pn) for pn in m.patch_nums[1:]]


def test_one_branch_cuts_every_cache_and_runs_the_head_unguided_on_the_kept_rows(small, monkeypatch):
    m = small.model
    B = 3
    seen = []
    real = m.diffloss.sample

    def spy(z, temperature=1.0, cfg=1.5):
        seen.append((z.shape[0], cfg))
        return real(z, temperature=temperature, cfg=cfg)

    monkeypatch.setattr(m.diffloss, "sample", spy)
    lengths = []
    with stagevar.accelerated(m, "uncond-last-2"):
        adapter = getattr(m, stagevar.api._ATTR).engine.adapter
        handle = m.blocks[-1].register_forward_hook(lambda *a: lengths.append(adapter.cache_lengths()[0]))
        _run(m, call_kwargs(small, B))
        handle.remove()
    n_last = m.last_level_pns
    assert seen == [(B * n_last, 1.0)], "one branch: B rows through the head's unguided path"
    assert all(rows == B for rows, _ in lengths[-2:]) and all(rows == 2 * B for rows, _ in lengths[:-2])
    with stagevar.accelerated(m, "none"):
        seen.clear()
        _run(m, call_kwargs(small, B))
    K = len(m.patch_nums)
    assert seen == [(2 * B * n_last, pytest.approx(4.5 * (K - 2) / (K - 1)))], "both: the stale ratio, 2B rows"


def test_uncond_branch_drops_the_text_and_cond_keeps_it(small):
    m = small.model
    outs = {}
    for name in ("uncond-last-2", "cond-last-2"):
        with stagevar.accelerated(m, name):
            a, _, _ = _run(m, call_kwargs(small, 2))
            b, _, _ = _run(m, call_kwargs(small, 2))
        assert torch.equal(a, b)
        outs[name] = a
    assert not torch.equal(outs["uncond-last-2"], outs["cond-last-2"])


def test_low_rank_runs_every_block_on_its_own_rank_and_the_position_cache_stays_bounded(small):
    m = small.model
    counts = []
    cfg = stagevar.preset("hart-0.7b-paper")
    with stagevar.accelerated(m, cfg):
        for _ in range(3):
            _run(m, call_kwargs(small, 2))
            counts.append(hart_module.get_position_ids.cache_info().currsize)
        rep = stagevar.last_report(m)
    last = rep.scales[-1]
    assert last.mode == "uncond-only+low-rank" and len(set(last.tokens)) > 1 and max(last.tokens) < last.M
    assert counts[0] == counts[1] == counts[2], "stagevar's calls must not grow upstream's position cache"


def test_representatives_get_their_own_rope_coordinates(small):
    """At full rank (every token a representative, in a shuffled order) the low-rank path's blocks
    see each token at its own position: the scale's output matches the intact run's closely."""
    m = small.model
    kw = call_kwargs(small, 2)
    full = stagevar.StageVARConfig(refine_start=-1, branch="uncond", rank_ratios={-1: 1.0}, reducer="sample",
                                   unit_blocks=1, name="full-rank")
    intact = stagevar.StageVARConfig(refine_start=-1, branch="uncond", name="intact")
    with stagevar.accelerated(m, intact):
        want = m.autoregressive_infer_cfg(**dict(kw, final_stage=1))
    with stagevar.accelerated(m, full):
        got = m.autoregressive_infer_cfg(**dict(kw, final_stage=1))
    assert (got - want).abs().max() < 1e-4


def test_low_rank_on_the_text_prefix_or_the_first_image_scale_is_refused(small):
    m = small.model
    cfg = stagevar.StageVARConfig(refine_start=1, branch="both", rank_ratios={1: 0.5}, name="bad")
    with pytest.raises(ConfigError, match="HART: low rank on scale 1 \\(the first image scale, whose restoration"):
        stagevar.accelerate(m, cfg)
    assert not stagevar.is_accelerated(m)
    cfg = stagevar.StageVARConfig(refine_start=0, branch="both", rank_ratios={0: 0.5}, name="bad")
    with pytest.raises(ConfigError, match="refine_start points at the first scale"):  # the text: the general rule
        stagevar.accelerate(m, cfg)
    with stagevar.accelerated(m, cfg.replace(refine_start=2, rank_ratios={2: 0.5})):  # scale 2 on is fine
        _run(m, call_kwargs(small, 1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_maskgit_iters=2), "num_maskgit_iters=2"),
    (dict(context_mask=None), "context_mask must be a \\(2, 16\\) tensor"),
    (dict(label_B=torch.zeros(2, 5, 64)), "label_B must be the prompts' text features"),
    (dict(cfg=[4.5]), "cfg must be one number"),
])
def test_bad_calls_are_refused_by_name_and_leave_the_model_usable(small, kwargs, match):
    m = small.model
    kw = dict(call_kwargs(small, 2), **kwargs)
    with stagevar.accelerated(m, "hart-0.7b-paper"):
        with pytest.raises((ValueError, TypeError), match=match):
            m.autoregressive_infer_cfg(**kw)
        assert all(length is None for length in getattr(m, stagevar.api._ATTR).engine.adapter.cache_lengths())
        _run(m, call_kwargs(small, 2))


def test_graphs_refuse_a_call_whose_last_scale_runs_the_diffusion_head(small, monkeypatch):
    from stagevar import executors as ex
    from stagevar.executors import GraphsUnavailableError
    from graph_fake import ReplayingBackend

    m = small.model
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend(m))
    with stagevar.accelerated(m, "hart-0.7b-paper", execution="auto", capture_after=2):
        for _ in range(3):
            _run(m, call_kwargs(small, 2))
            assert "diffusion head" in stagevar.last_report(m).note
            assert stagevar.last_report(m).executor == "eager"
        for _ in range(3):  # no diffusion head: the call shape captures and replays
            _run(m, call_kwargs(small, 2, final_stage=1))
        assert stagevar.last_report(m).executor == "graphs"
    with stagevar.accelerated(m, "hart-0.7b-paper", execution="graphs"):
        with pytest.raises(GraphsUnavailableError, match="diffusion head"):
            _run(m, call_kwargs(small, 2))


def test_a_model_variant_upstream_does_not_publish_is_refused():
    b = reference_hart("tiny")
    b.model.use_cross_attn = True
    with pytest.raises(stagevar.UnsupportedModelError, match="use_cross_attn"):
        stagevar.accelerate(b.model, "none")


def test_the_tools_run_on_hart(small):
    from stagevar.tools import bench

    rep = bench.run(small.model, ["baseline", "hart-0.7b-paper"], call_kwargs(small, 1), repeats=1, warmup=0)
    assert [r["method"] for r in rep["methods"]] == ["baseline", "hart-0.7b-paper"]
    assert rep["methods"][1]["flop_ratio"] > 1.0


def test_the_presets_and_fastvars_hart_policy_plan_what_they_say(small):
    m = small.model
    K = len(m.patch_nums)
    stagevar.accelerate(m)
    try:
        assert stagevar.current_config(m).name == "hart-0.7b-paper"
        for name, branch, reduced in (("hart-0.7b-paper", "uncond", [K - 1]), ("hart-0.7b", "uncond", [K - 1]),
                                      ("fastvar-hart", "both", [K - 2, K - 1])):
            stagevar.accelerate(m, name)
            _run(m, call_kwargs(small, 2))
            scales = stagevar.last_report(m).scales
            assert [s.index for s in scales if "low-rank" in s.mode or "pruned" in s.mode or
                    s.tokens != (s.M,) * len(s.tokens)] == reduced, name
            assert all(s.rows == (2 if branch == "uncond" else 4) for s in scales[-2:]), name
        last = stagevar.last_report(m).scales[-1]
        assert set(last.tokens) == {int(0.25 * last.M) + 1}  # FastVAR keeps 25% at side 64 (here the last)
    finally:
        stagevar.restore(m)


@pytest.mark.parametrize("config", ["none", "hart-0.7b-paper", "hart-0.7b", "fastvar-hart", "cond-last-2"])
def test_hart_scales_are_sync_free_but_the_diffusion_heads(watched, small, config):
    m = small.model
    K = len(m.patch_nums)
    with stagevar.accelerated(m, config):
        _run(m, call_kwargs(small, 2, final_stage=1, top_p=0.9))
        _run(m, call_kwargs(small, 1, final_stage=1, more_smooth=True))
        assert watched == []
        _run(m, call_kwargs(small, 2))  # the head: upstream's own sampler (its steps are host-side floats)
    assert all(w.startswith(f"scale {K - 1}:") for w in watched)
