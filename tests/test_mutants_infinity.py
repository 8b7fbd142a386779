"""stagevar.adapters.infinity: behaviours the sampled mutation run (TESTING.md) found untested."""
import pytest
import torch

import stagevar
from stagevar.models import reference_infinity


def _kw(bundle, **extra):
    sched = bundle.schedule("1:1")
    K = len(sched)
    kw = dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(["a cat", "sky"]), B=2, g_seed=0,
              cfg_list=[3.0] * K, tau_list=[0.8] * K, top_k=0, top_p=0.0, ret_img=True)
    kw.update(extra)
    return kw


def test_the_calls_top_k_is_honoured():
    bundle = reference_infinity("tiny")
    m = bundle.model
    kw = _kw(bundle, top_k=1)            # greedy per bit
    want = m.autoregressive_infer_cfg(**kw)[2]
    with stagevar.accelerated(m, "none"):
        got = m.autoregressive_infer_cfg(**kw)[2]
    assert torch.equal(got, want)
    assert not torch.equal(want, m.autoregressive_infer_cfg(**_kw(bundle))[2])   # top_k=1 changes the sample


def test_cfg_insertion_layer_above_one_is_refused_with_the_rule():
    bundle = reference_infinity("tiny")
    with stagevar.accelerated(bundle.model, "none"):
        with pytest.raises(ValueError, match=r"^cfg_insertion_layer entries must be <= 1 \(0: logits, <0: hidden states\), got "):
            bundle.model.autoregressive_infer_cfg(**_kw(bundle, cfg_insertion_layer=[2]))


def test_skipping_a_middle_scale_feeds_the_next_scale_what_was_generated():
    """The input after a skipped scale is built from the codes generated so far (so it differs between seeds), not zeros."""
    from stagevar.api import _ATTR
    from conftest import ScaleInputs

    bundle = reference_infinity("tiny")
    K = len(bundle.schedule("1:1"))
    stagevar.accelerate(bundle.model, stagevar.StageVARConfig(refine_start=None, skip=(K - 3,), name="t"))
    engine = getattr(bundle.model, _ATTR).engine
    seen = []
    for seed in (0, 1):
        obs = ScaleInputs()
        engine.observe(obs, **_kw(bundle, g_seed=seed))
        assert K - 3 not in obs.x
        seen.append(obs.x[K - 2])
    assert (seen[0] - seen[1]).abs().amax() > 1e-4
