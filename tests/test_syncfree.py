"""Inside a scale, no operation reads a device value on the host or builds a tensor from host data.

Such an operation stalls the host on a GPU (it waits for the device) and cannot be captured in a
CUDA graph. The check runs on a CPU: a dispatch mode around :meth:`Engine.run_scale` fails on
``.item()`` / ``int(t)`` / ``bool(t)`` (``_local_scalar_dense``), ``nonzero``, tensors made from
Python values (``lift_fresh``, beyond 0-d scalars) and copies across devices (the ``watched``
fixture, in conftest.py: the HART and STAR tests use it too).
"""
import pytest
import torch

import stagevar
from stagevar import StageVARConfig
from stagevar.models import reference_infinity, reference_var

from conftest import gen_kwargs

def _family_presets(prefixes):
    return [n for n in stagevar.preset_names() if n == "none" or n.startswith(prefixes)]


_EXTRA = [
    StageVARConfig(refine_start=-2, branch="cond", rank_ratio=0.3, reducer="sample", name="cond-sample"),
    StageVARConfig(refine_start=-2, branch="both", rank_ratio=0.4, reducer="fastvar",
                   name="fastvar-like"),
    StageVARConfig(refine_start=-3, branch="uncond", rank_ratio=0.2, skip=(-1,), name="skip-last"),
]


@pytest.mark.parametrize("config", _family_presets(("var-", "stagevar-tiny")) + _EXTRA, ids=str)
def test_var_scales_are_sync_free(watched, config):
    model = reference_var("small")
    stagevar.accelerate(model, config)
    model.autoregressive_infer_cfg(**gen_kwargs(2, seed=0, top_k=5, top_p=0.9))
    model.autoregressive_infer_cfg(**gen_kwargs(1, seed=1, more_smooth=True))
    assert watched == []


@pytest.mark.parametrize("shape", ["tiny", "8b-tiny"])  # the 2B layout and Infinity-8B's patchified one
@pytest.mark.parametrize("config", _family_presets(("infinity-",)) + _EXTRA, ids=str)
def test_infinity_scales_are_sync_free(watched, config, shape):
    from test_infinity import call_kwargs

    bundle = reference_infinity(shape)
    stagevar.accelerate(bundle.model, config)
    bundle.model.autoregressive_infer_cfg(**call_kwargs(bundle, 2, "16:9", negative=True, top_k=3))
    bundle.model.autoregressive_infer_cfg(**call_kwargs(bundle, 1, "1:1"))
    assert watched == []


def test_the_check_sees_host_reads(watched, monkeypatch):
    """The check itself can fail: a planted .item() and a host-built tensor inside a scale are caught."""
    model = reference_var("tiny")
    stagevar.accelerate(model, "none")
    adapter = getattr(model, stagevar.api._ATTR).engine.adapter
    real = adapter.predict

    def predict(st, si, x):
        float(x.sum())
        torch.tensor([si], device=x.device)
        return real(st, si, x)

    monkeypatch.setattr(adapter, "predict", predict)
    model.autoregressive_infer_cfg(**gen_kwargs(1))
    assert any("_local_scalar_dense" in s for s in watched) and any("lift_fresh" in s for s in watched)
