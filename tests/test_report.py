"""stagevar.report: the last call's per-scale statistics, the timeline its times come from, and the
FLOP model its work figures come from."""
import json

import pytest
import torch
from conftest import gen_kwargs

import stagevar
from stagevar.models import reference_var
from stagevar.plan import ScalePlan, resolve_plan, unit_layout
from stagevar.report import SKIPPING_LABEL, Report, ScaleStats, Timeline, block_flops, plan_stats


def test_timeline_gives_the_time_between_each_pair_of_consecutive_marks():
    t = Timeline(torch.device("cpu"))
    t.marks = [10.0, 11.0, 13.0, 16.0]          # loop start, two scales, decode end
    assert t.seconds() == [1.0, 2.0, 3.0]      # one entry per interval: the report's per-scale times and decode time


def test_block_flops_counts_the_projections_the_mlp_and_attention_per_token():
    # 24 C^2 per token (QKV, output, a 4C MLP) plus 4 C per key attended
    assert block_flops(rows=2, n=3, kv_len=5, C=8) == 2 * 3 * (24 * 64 + 4 * 8 * 5)
    assert block_flops(rows=1, n=0, kv_len=9, C=8) == 0


def test_plan_stats_follow_the_plan_rows_tokens_and_kv_growth():
    """Rows halve at the first one-branch scale, a reduced unit counts its own tokens, an intact unit
    of a reduced scale counts M, a skipped scale adds nothing, and the KV cache grows by what each
    block computed."""
    plans = [ScalePlan(0, (1, 1)), ScalePlan(1, (2, 2)), ScalePlan(2, (4, 4), branch="uncond", ranks=(5, None)),
             ScalePlan(3, (8, 8), skipped=True)]
    units = [(0, 1), (1, 3)]
    stats = plan_stats(plans, units, rows0=4, C=8)
    assert stats.rows == (4, 4, 2, 0)
    assert stats.tokens == ((1, 1), (4, 4), (5, 16), ())
    assert stats.cache_tokens[2] == (1 + 4 + 5, 1 + 4 + 16, 1 + 4 + 16) and stats.cache_tokens[3] == stats.cache_tokens[2]
    want = block_flops(2, 5, 10, 8) + 2 * block_flops(2, 16, 21, 8)
    assert stats.gflops[2] == pytest.approx(want / 1e9) and stats.gflops[3] == 0
    assert stats.intact_rows == 4


def test_a_call_report_counts_what_ran_and_prints_one_line_per_scale():
    var = reference_var("tiny")
    stagevar.accelerate(var, _one_branch_lowrank())
    var.autoregressive_infer_cfg(**gen_kwargs(2))
    rep = stagevar.last_report(var)
    assert rep.batch_size == 2 and rep.executor == "eager" and rep.config_name == "t"
    assert [s.rows for s in rep.scales] == [4, 4, 4, 2] and [s.mode for s in rep.scales][-1] == "uncond-only+low-rank"
    assert rep.scales[-1].tokens == (int(0.5 * 16) + 1,) * 2
    assert rep.token_rows < rep.intact_token_rows == 4 * (1 + 4 + 9 + 16)
    assert rep.total_s == pytest.approx(rep.loop_s + rep.decode_s) and all(s.time_s > 0 for s in rep.scales)
    text = str(rep)
    assert len([line for line in text.splitlines() if line.strip()[:1].isdigit()]) == 4
    assert "config='t' [given] B=2" in text and SKIPPING_LABEL not in text
    d = rep.to_dict()
    json.dumps(d)
    assert [s["M"] for s in d["scales"]] == [1, 4, 9, 16] and d["gflops"] == pytest.approx(rep.gflops)


def test_a_skipping_call_is_labelled():
    rep = Report(config_name="x", batch_size=1, device="cpu", skipping=True,
                 scales=[ScaleStats(0, (1, 1), "intact", 2, (1,), 0.001), ScaleStats(1, (2, 2), "skip", 0, (), 0.0)])
    assert SKIPPING_LABEL in str(rep).splitlines()[0]
    assert "-" in str(rep).splitlines()[3]  # a skipped scale computed no tokens


def test_the_report_of_a_resolved_plan_matches_its_stats():
    cfg = stagevar.preset("fastvar")
    plans = resolve_plan(cfg, [(p, p) for p in (1, 2, 4, 8)], unit_layout(10, 1))
    stats = plan_stats(plans, unit_layout(10, 1), rows0=2, C=16)
    pruned = int(0.5 * 64) + 1
    assert stats.tokens[-1] == (64,) + (pruned,) * 7 + (64,) * 2  # blocks 1 .. 7 (round(0.85 * 10) = 8) pruned
    assert stats.rows == (2, 2, 2, 2)  # both branches run


def _one_branch_lowrank():
    return stagevar.StageVARConfig(refine_start=-1, branch="uncond", rank_ratio=0.5, unit_blocks=1, name="t")


def test_a_graphs_report_prints_its_note_capture_time_and_pool_growth():
    """The lines a graph executor's report adds, and the dict's keys, read back exactly."""
    var = reference_var("tiny")
    stagevar.accelerate(var, _one_branch_lowrank())
    var.autoregressive_infer_cfg(**gen_kwargs(2))
    rep = stagevar.last_report(var)
    rep.executor, rep.note, rep.capture_s, rep.pool_bytes = "graphs", "replayed", 1.2345, 3 * 2 ** 20
    text = str(rep)
    assert "executor=graphs (replayed)" in text
    assert "graphs captured once in 1234 ms, shared pool grown 3 MiB by this call shape" in text
    assert text.splitlines()[1].split() == ["scale", "h", "x", "w", "M", "rows", "tokens/unit", "ms", "mode"]
    d = rep.to_dict()
    assert d["executor"] == "graphs" and d["note"] == "replayed" and d["skipping"] is False
