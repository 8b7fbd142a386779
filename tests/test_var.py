"""stagevar.adapters.var: behaviours the sampled mutation run (TESTING.md) found untested."""
import torch

import stagevar
from stagevar.models import reference_var


def test_a_call_that_leaves_cfg_out_uses_the_models_default_cfg():
    m = reference_var("tiny")
    kw = dict(B=2, label_B=torch.tensor([1, 2]), g_seed=0, top_k=0, top_p=0.0)   # no cfg=: upstream's default 1.5
    want = m.autoregressive_infer_cfg(**kw)
    with stagevar.accelerated(m, "none"):
        got = m.autoregressive_infer_cfg(**kw)
    assert torch.equal(got, want)
    assert not torch.equal(got, m.autoregressive_infer_cfg(**kw, cfg=4.0))


def test_default_conditions_cycle_through_the_classes():
    from stagevar.adapters import adapter_for

    var = reference_var("tiny")
    n = int(var.num_classes)
    assert adapter_for(var).default_conditions(n + 2) == list(range(n)) + [0, 1]
