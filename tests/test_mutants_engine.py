"""stagevar.engine: behaviours the sampled mutation run (TESTING.md) found untested."""
import torch

from stagevar.report import Timeline


def test_timeline_gives_the_time_between_each_pair_of_consecutive_marks():
    t = Timeline(torch.device("cpu"))
    t.marks = [10.0, 11.0, 13.0, 16.0]          # loop start, two scales, decode end
    assert t.seconds() == [1.0, 2.0, 3.0]      # one entry per interval: the report's per-scale times and decode time
