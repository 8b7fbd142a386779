"""The interleaved runner (stagevar.tools.runner) and executor-aware timing (stagevar.bench.interleaved),
on tiny models; graphs through the replaying stand-in backend of tests/graph_fake.py."""
import pytest
import torch

import stagevar
import stagevar.executors as ex
import stagevar.tools.runner as methods
from stagevar import GraphFallbackWarning, StageVARConfig
from stagevar.tools.bench import format_timing, interleaved
from stagevar.tools.runner import BASELINE, Arm, arms_for, run_interleaved

from conftest import gen_kwargs
from graph_fake import ReplayingBackend

LOWRANK = StageVARConfig(refine_start=-2, rank_ratio=0.3, name="lowrank")


def _fake_graphs(monkeypatch, model, **kw):
    backend = ReplayingBackend(model, **kw)
    monkeypatch.setattr(ex, "CudaGraphBackend", lambda: backend)
    return backend


def _count_calls(monkeypatch):
    calls = []
    real = methods.timed

    def counted(fn, device=None):
        calls.append(1)
        return real(fn, device)

    monkeypatch.setattr(methods, "timed", counted)
    return calls


def test_arms_cross_methods_with_executors():
    arms = arms_for([("baseline", BASELINE), ("a", LOWRANK)], ["eager", "graphs", "eager"])
    assert [(a.label, a.execution) for a in arms] == [("baseline", "eager"), ("a", "eager"), ("a", "graphs")]
    assert arms[2].name == "a [graphs]" and arms[1].name == "a"
    with pytest.raises(ValueError, match="runs eagerly"):
        Arm("baseline", BASELINE, "graphs")
    with pytest.raises(ValueError, match="execution"):
        Arm("a", LOWRANK, "fast")
    for bad in (None, "", 3):
        with pytest.raises(ValueError, match=f"an arm's label must be a non-empty string .*, got {bad!r}"):
            Arm(bad, LOWRANK)


def test_runner_interleaves_round_robin_with_the_same_arguments(monkeypatch, tiny):
    """Every round runs every batch under every arm in order; every arm gets each batch's own
    arguments (seeds) every round: 'none' equals the unpatched call batch by batch, an arm repeats
    itself round after round, and the batches differ."""
    arms = [Arm("baseline", BASELINE), Arm("lowrank", LOWRANK), Arm("none", stagevar.preset("none"))]
    batches = [gen_kwargs(2, seed=0), gen_kwargs(2, seed=5, label_B=torch.tensor([3, 7]))]
    calls = _count_calls(monkeypatch)
    seen, outs = [], {}

    def on_call(rec, out):
        seen.append((rec.round, rec.batch, rec.arm))
        outs[rec.round, rec.batch, rec.arm] = out
        assert (rec.report is None) == (rec.arm == 0)
        assert rec.wall_s > 0 and rec.host_s > 0 and 0 < rec.decode_s < rec.wall_s

    result = run_interleaved(tiny, arms, batches, rounds=2, warmup=1, on_call=on_call)
    assert seen == [(r, b, a) for r in range(2) for b in range(2) for a in range(3)]
    assert len(calls) == 3 + 2 * 2 * 3  # one warm-up call per arm, then the timed ones
    assert [(r.round, r.batch, r.arm) for r in result.records] == seen
    for r in range(2):
        for b in range(2):
            assert torch.equal(outs[r, b, 2], outs[r, b, 0])
            assert torch.equal(outs[r, b, 1], outs[0, b, 1])
    assert not torch.equal(outs[0, 0, 0], outs[0, 1, 0])
    assert not stagevar.is_accelerated(tiny) and "fhat_to_img" not in vars(tiny.vae_proxy[0])


def test_runner_refuses_a_patched_model_and_bad_rounds(tiny):
    with pytest.raises(ValueError, match="rounds"):
        run_interleaved(tiny, [Arm("baseline", BASELINE)], [gen_kwargs(1)], rounds=0)
    stagevar.accelerate(tiny, "var-d16")
    with pytest.raises(ValueError, match="unpatched model"):
        run_interleaved(tiny, [Arm("baseline", BASELINE)], [gen_kwargs(1)])
    assert stagevar.current_config(tiny).name == "var-d16"


@pytest.mark.parametrize("where", ["call", "on_call", "config"])
def test_runner_restores_the_model_on_any_exception(monkeypatch, tiny, where):
    backend = _fake_graphs(monkeypatch, tiny)
    arms = [Arm("baseline", BASELINE), Arm("lowrank", LOWRANK, "graphs"), Arm("none", stagevar.preset("none"))]
    on_call = None
    if where == "call":  # 'none' raises once the graphs arm has replayed: in the first timed round
        real = stagevar.engine.Engine.run_scale

        def flaky(self, call, p):
            if backend.replays and not backend.replaying and self.config.name == "none":
                raise RuntimeError("boom")
            return real(self, call, p)

        monkeypatch.setattr(stagevar.engine.Engine, "run_scale", flaky)
    elif where == "on_call":
        def raise_in_round_1(rec, out):
            if rec.round == 1:
                raise RuntimeError("boom")

        on_call = raise_in_round_1
    else:  # a config that does not fit the model: refused while the arms are set up
        arms.append(Arm("bad", StageVARConfig(refine_start=-2, unit_blocks=5, name="bad")))
    with pytest.raises((RuntimeError, stagevar.ConfigError)):
        run_interleaved(tiny, arms, [gen_kwargs(2)], rounds=3, warmup=1, on_call=on_call)
    assert not stagevar.is_accelerated(tiny)
    assert "fhat_to_img" not in vars(tiny.vae_proxy[0])
    if where != "config":
        assert backend.captures > 0 and backend.released > 0  # the graphs arm's graphs freed
    monkeypatch.undo()
    tiny.autoregressive_infer_cfg(**gen_kwargs(2))
    assert all(b.attn.cached_k is None for b in tiny.blocks)


def test_graph_arms_capture_once_and_replay_while_interleaved(monkeypatch, tiny):
    """Each graphs arm keeps its engine across the other arms' calls: one capture per scale for
    the run, every timed call a replay."""
    backend = _fake_graphs(monkeypatch, tiny)
    arms = arms_for([("baseline", BASELINE), ("lowrank", LOWRANK), ("none", stagevar.preset("none"))], ["eager", "graphs"])
    calls = _count_calls(monkeypatch)
    result = run_interleaved(tiny, arms, [gen_kwargs(2, seed=1)], rounds=2, warmup=1)
    K = len(tiny.patch_nums)
    assert backend.captures == 2 * K
    assert len(calls) == (1 + 1 + 3 + 1 + 3) + 2 * len(arms)  # graphs arms: two eager calls and the capture first
    for i, arm in enumerate(arms):
        reps = [r.report for r in result.of(i)]
        if arm.execution == "graphs":
            assert all(r.executor == "graphs" for r in reps)
        elif arm.config is not BASELINE:
            assert all(r.executor == "eager" for r in reps)
    assert not stagevar.is_accelerated(tiny)


def test_interleaved_rows_per_executor_with_the_stand_in_backend(monkeypatch, tiny):
    _fake_graphs(monkeypatch, tiny)
    rows = interleaved(tiny, gen_kwargs(2, seed=3), [("baseline", BASELINE), ("lowrank", LOWRANK)], repeats=2,
                       warmup=0, executions=["eager", "graphs"])
    got = [(r["method"], r["execution"]) for r in rows]
    assert got == [("baseline", "eager"), ("none", "eager"), ("none", "graphs"), ("lowrank", "eager"),
                   ("lowrank", "graphs")]
    by = {k: r for k, r in zip(got, rows)}
    for (label, execution), r in by.items():
        assert r["calls"] == 2 and r["e2e_min_ms"] <= r["e2e_ms"] <= r["e2e_max_ms"]
        assert r["host_ms"] > 0 and r["device_ms"] > 0 and r["host_wall"] > 0
        if execution == "graphs":
            assert r["ran"] == ["graphs"] and r["exact"] is True and not r["fell_back"]
            assert r["capture_ms"] > 0 and r["pool_mib"] == 0.0
        else:
            assert r["ran"] == ["eager"] and r["exact"] is None and r["capture_ms"] is None
    base = by["baseline", "eager"]
    assert base["e2e_speedup"] == base["loop_speedup"] == base["device_speedup"] == 1.0
    assert by["none", "graphs"]["none_wall_ratio"] == by["none", "eager"]["none_device_ratio"] == 1.0
    lr = by["lowrank", "graphs"]
    assert lr["none_wall_ratio"] == pytest.approx(by["none", "graphs"]["e2e_ms"] / lr["e2e_ms"])
    assert lr["e2e_speedup"] == pytest.approx(base["e2e_ms"] / lr["e2e_ms"])
    table = format_timing("t", rows)
    assert "lowrank" in table and "yes" in table and "ran eager" not in table
    assert not stagevar.is_accelerated(tiny)


def test_graphs_only_exactness_is_checked_against_an_eager_call(monkeypatch, tiny):
    _fake_graphs(monkeypatch, tiny)
    rows = interleaved(tiny, gen_kwargs(2, seed=3), [("lowrank", LOWRANK)], repeats=1, warmup=0,
                       executions=["graphs"])
    assert [(r["method"], r["execution"]) for r in rows] == [("baseline", "eager"), ("none", "graphs"),
                                                             ("lowrank", "graphs")]
    assert all(r["exact"] is True for r in rows[1:])
    assert rows[0]["none_wall_ratio"] is None  # no eager 'none' to compare the unpatched call with


def test_a_fallback_to_eager_is_reported(monkeypatch, tiny):
    """Graphs that are not exact fall back (the executor's own check); the row says so and why."""
    _fake_graphs(monkeypatch, tiny, perturb=True)
    with pytest.warns(GraphFallbackWarning):
        rows = interleaved(tiny, gen_kwargs(2), [("lowrank", LOWRANK)], repeats=2, warmup=0,
                           executions=["graphs"])
    r = rows[-1]
    assert r["fell_back"] and r["ran"] == ["eager"] and r["eager_calls"] == 2
    assert any("differs" in n for n in r["notes"])
    assert "lowrank [graphs]: ran eager in 2 of 2 timed calls: graphs off for this key" in format_timing("t", rows)
