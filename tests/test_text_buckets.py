"""Text bucketing: a call's text padded to a bucket length so that prompts of different lengths
share one call shape (and one set of CUDA graphs), checked against the unpadded call."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import stagevar
import stagevar.executors as ex
import stagevar.models.infinity as ref_inf
from stagevar import TextBucketWarning
from stagevar.api import _ATTR
from stagevar.models import reference_infinity, reference_star, reference_var

from graph_fake import ReplayingBackend
from test_infinity import call_kwargs

# ten prompt lengths (1..10 words), two with equal totals at B=2 but other splits
WORDS = "a red fox runs over the deep snow at night under stars".split()
LENGTHS = list(range(1, 11))


def _prompts(*lengths):
    return [" ".join(WORDS[:n]) for n in lengths]


def _varlen_forward(self, q_BLC, ca_kv):
    """Cross-attention that reads each text's own rows only (as flash-attn's varlen kernel does):
    rows outside every ``cu_seqlens_k`` span, and ``max_seqlen_k``, cannot change a bit."""
    kv_compact, cu, _ = ca_kv
    B, L, C = q_BLC.shape
    H, hd = self.num_heads, self.head_dim
    q = self.mat_q(q_BLC).view(B, L, H, hd).transpose(1, 2)
    starts, outs = cu.tolist(), []
    for i in range(B):
        kv = F.linear(kv_compact[starts[i]:starts[i + 1]], self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        k, v = kv.view(-1, 2, H, hd).permute(1, 2, 0, 3).unbind(0)  # H Lk hd
        qi = q[i:i + 1]
        if qi.dtype == torch.float32:
            o = F.scaled_dot_product_attention(qi.bfloat16(), k[None].bfloat16(), v[None].bfloat16()).float()
        else:
            o = F.scaled_dot_product_attention(qi, k[None].to(qi.dtype), v[None].to(qi.dtype))
        outs.append(o)
    return self.proj(torch.cat(outs).transpose(1, 2).reshape(B, L, C))


@pytest.fixture
def varlen(monkeypatch):
    """The tiny reference Infinity with a varlen cross-attention (exact with padded text)."""
    monkeypatch.setattr(ref_inf.CrossAttention, "forward", _varlen_forward)
    return reference_infinity("tiny")


def _engine(model):
    return getattr(model, _ATTR).engine


def _call(bundle, prompts, seed=0, negative=False, **extra):
    kw = call_kwargs(bundle, len(prompts), seed=seed, **extra)
    kw["label_B_or_BLT"] = bundle.encode(prompts)
    if negative:
        kw["negative_label_B_or_BLT"] = bundle.encode(_prompts(*[3] * len(prompts)))
    return kw


# -- arguments and defaults ----------------------------------------------------------------------
def test_defaults_on_under_graphs_off_under_eager(monkeypatch):
    bundle = reference_infinity("tiny")
    m = bundle.model
    stagevar.accelerate(m, "infinity-2b", execution="eager")
    assert _engine(m).text_buckets == ()
    longest = m.cfg_uncond.shape[0]
    assert _engine(m).adapter.default_text_buckets()[-1] == longest
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend(m))
    stagevar.accelerate(m, "infinity-2b", execution="graphs")
    assert _engine(m).text_buckets == _engine(m).adapter.default_text_buckets()
    stagevar.accelerate(m, "infinity-2b", execution="graphs", text_buckets=())
    assert _engine(m).text_buckets == ()
    stagevar.accelerate(m, "infinity-2b", execution="eager", text_buckets=[8, 16])
    assert _engine(m).text_buckets == (8, 16)
    star = reference_star("tiny").model
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend(star))
    stagevar.accelerate(star, "none", execution="graphs")
    assert _engine(star).text_buckets == ()  # its encoder pads every prompt to one length already


@pytest.mark.parametrize("bad, match", [((16, 8), "increasing"), ((8, 8), "increasing"), ((0, 8), "positive"),
                                         ((8.0,), "positive"), ((True,), "positive"), ("64", "tuple"), (64, "tuple")])
def test_bad_buckets_are_refused_and_the_model_is_left_as_it_was(bad, match):
    m = reference_infinity("tiny").model
    with pytest.raises((TypeError, ValueError), match=match) as err:
        stagevar.accelerate(m, "none", text_buckets=bad)
    assert "text_buckets" in str(err.value)
    assert not stagevar.is_accelerated(m)


def test_a_family_without_text_refuses_buckets():
    m = reference_var("tiny")
    with pytest.raises(ValueError, match="no text"):
        stagevar.accelerate(m, "none", text_buckets=(16,))
    assert not stagevar.is_accelerated(m)
    stagevar.accelerate(m, "none", text_buckets=())


# -- exactness -------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["none", "infinity-2b"])
@pytest.mark.parametrize("autocast", [False, True])
def test_bucketed_calls_are_bit_identical_to_unpadded_ones(varlen, config, autocast):
    m = varlen.model
    cases = [(_prompts(2), False), (_prompts(7, 3), True), (_prompts(3, 7), False), (_prompts(5, 5), False),
             (_prompts(1, 9, 4), True)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        want = []
        with stagevar.accelerated(m, config, execution="eager", text_buckets=()):
            for i, (prompts, negative) in enumerate(cases):
                want.append(m.autoregressive_infer_cfg(**_call(varlen, prompts, seed=i, negative=negative)))
        with warnings.catch_warnings():
            warnings.simplefilter("error", TextBucketWarning)
            with stagevar.accelerated(m, config, execution="eager", text_buckets=(8, 16)):
                for rep in range(2):  # first call of each bucket: checked; the second runs padded
                    for i, (prompts, negative) in enumerate(cases):
                        got = m.autoregressive_infer_cfg(**_call(varlen, prompts, seed=i, negative=negative))
                        assert torch.equal(got[2], want[i][2]), (prompts, rep)
                        n, bucket, why = stagevar.last_report(m).text
                        assert n == max(len(p.split()) for p in prompts)
                        if rep == 1:
                            assert bucket == (8 if n <= 8 else 16) and why == "", stagevar.last_report(m).text
                assert not _engine(m).buckets_off


def test_a_padded_call_that_differs_turns_bucketing_off_and_returns_the_unpadded_result(varlen, monkeypatch):
    m = varlen.model
    kw = _call(varlen, _prompts(3, 6), seed=2)
    with stagevar.accelerated(m, "infinity-2b", execution="eager", text_buckets=()):
        want = m.autoregressive_infer_cfg(**kw)[2]
    stagevar.accelerate(m, "infinity-2b", execution="eager", text_buckets=(8,))
    adapter = _engine(m).adapter
    real = adapter.pad_text

    def leaky(st, length):  # padding a span reads: a backend that is not exact with padded text
        real(st, length)
        kv, cu, n = st.ca_kv
        st.ca_kv = (kv, cu.clone().index_put_((torch.tensor([cu.shape[0] - 1]),), cu[-1] + 1), n)

    monkeypatch.setattr(adapter, "pad_text", leaky)
    with pytest.warns(TextBucketWarning, match="padded to 8 tokens differs from the unpadded call at scale 0.s transformer output"):
        got = m.autoregressive_infer_cfg(**kw)[2]
    assert torch.equal(got, want)
    assert "text buckets off" in stagevar.last_report(m).text[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TextBucketWarning)
        assert torch.equal(m.autoregressive_infer_cfg(**kw)[2], want)  # unpadded from now on, no second warning
    assert stagevar.last_report(m).text[1] == 0 and "off" in str(stagevar.last_report(m))


def test_unseeded_and_overlong_calls_run_unpadded(varlen):
    m = varlen.model
    stagevar.accelerate(m, "infinity-2b", execution="eager", text_buckets=(4,))
    m.autoregressive_infer_cfg(**_call(varlen, _prompts(9), seed=1))
    assert stagevar.last_report(m).text == (9, 0, "text longer than every bucket (4 tokens)")
    m.autoregressive_infer_cfg(**_call(varlen, _prompts(2), seed=None))
    assert stagevar.last_report(m).text[1] == 0 and "unseeded" in stagevar.last_report(m).text[2]


# -- one call shape for many prompt lengths, under (stand-in) graphs ----------------------------
def test_thirty_calls_of_ten_prompt_lengths_capture_once_per_bucket(varlen, monkeypatch):
    m = varlen.model
    backend = ReplayingBackend(m)
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: backend)
    stagevar.accelerate(m, "infinity-2b", execution="graphs", text_buckets=(6, 12))
    executor = _engine(m).executor
    replays = 0
    for call in range(30):
        n = LENGTHS[call % 10]
        prompts = _prompts(n, max(1, n - 3))
        kw = _call(varlen, prompts, seed=call)
        got = m.autoregressive_infer_cfg(**kw)[2]
        rep = stagevar.last_report(m)
        assert rep.text[0] == n
        replays += rep.executor == "graphs" and "captured" not in rep.note
        with stagevar.accelerated(m, "infinity-2b", execution="eager", text_buckets=()):
            assert torch.equal(got, m.autoregressive_infer_cfg(**kw)[2]), call
    counts = executor.counts()
    assert len(counts) == 2  # one key per bucket
    assert all(c["captures"] <= 1 for c in counts.values()), counts
    assert sum(c["replays"] for c in counts.values()) == replays >= 20, counts
    assert str(stagevar.last_report(m)).splitlines()[-1].startswith("text: 10 tokens, padded to bucket 12")


def test_without_buckets_every_length_is_its_own_key(varlen, monkeypatch):
    m = varlen.model
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: ReplayingBackend(m))
    stagevar.accelerate(m, "infinity-2b", execution="graphs", text_buckets=())
    _engine(m).executor.max_keys = 20
    for call in range(10):
        m.autoregressive_infer_cfg(**_call(varlen, _prompts(LENGTHS[call], 2), seed=call))
    assert len(_engine(m).executor.keys) == 10


# -- STAR: padded tokens masked in cross-attention ---------------------------------------------------
def test_star_padding_masks_the_added_tokens():
    bundle = reference_star("tiny")
    m = bundle.model
    stagevar.accelerate(m, "none", execution="eager", text_buckets=(16,))
    adapter = _engine(m).adapter
    for given in ("mask", "none", "bool"):
        kw = dict(B=2, label_B=None, g_seed=0, cfg=3.0, **bundle.encode(_prompts(2, 5)))
        T = kw["encoder_hidden_states"].shape[1]
        if given == "none":
            kw["encoder_attention_mask"] = None
        elif given == "bool":
            kw["encoder_attention_mask"] = kw["encoder_attention_mask"].bool()[:, None, None, :]
        assert adapter.text_lengths((), kw) == (T,)
        st = adapter.begin((), kw)
        try:
            mask_before = st.text_mask
            adapter.pad_text(st, 16)
            assert st.text.shape[1] == 16 and torch.equal(st.text[:, T:], torch.zeros_like(st.text[:, T:]))
            pad = st.text_mask[..., T:]
            if given == "bool":
                assert st.text_mask.dtype == torch.bool and not pad.any()
            else:
                assert torch.isneginf(pad).all()
            if mask_before is not None:
                assert torch.equal(st.text_mask[..., :T], mask_before)
            else:
                assert torch.equal(st.text_mask[..., :T], torch.zeros_like(st.text_mask[..., :T]))
        finally:
            adapter.end(st)
    with pytest.raises(ValueError, match="shorter"):
        st = adapter.begin((), dict(B=2, label_B=None, g_seed=0, **bundle.encode(_prompts(2, 5))))
        try:
            adapter.pad_text(st, 2)
        finally:
            adapter.end(st)
