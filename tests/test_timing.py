"""stagevar.tools.timing: which device each measurement reads.

The CUDA branches run here with torch.cuda's functions stood in by recorders (the machine has no
GPU): what is checked is which device each call is given, and the arithmetic on what it returns.
"""
import pytest
import torch

from stagevar.tools.timing import DecodeTimer, PeakMemory, sync, timed


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda reports a card; synchronize / reset_peak_memory_stats / max_memory_allocated record
    the device they were given (the peak reads 3 MiB)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append(("sync", d)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(("reset", d)))

    def peak(d=None):
        calls.append(("peak", d))
        return 3 * 2 ** 20

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", peak)
    return calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default device is a card here")
def test_timed_without_a_device_uses_the_host_clock_on_a_cpu():
    out, t = timed(lambda: 5)
    assert out == 5 and t.wall_s == t.host_s >= 0


def test_sync_waits_for_the_device_asked_for_and_only_a_card(fake_cuda):
    sync("cpu")
    sync(torch.device("cpu"))
    assert fake_cuda == []
    sync("cuda:1")
    sync(None)  # the current card
    assert fake_cuda == [("sync", torch.device("cuda:1")), ("sync", None)]


def test_peak_memory_on_a_card_resets_syncs_and_reads_that_card(fake_cuda):
    with PeakMemory("cuda:1") as mem:
        assert fake_cuda == [("reset", torch.device("cuda:1"))]
    assert fake_cuda[1:] == [("sync", torch.device("cuda:1")), ("peak", torch.device("cuda:1"))]
    assert (mem.kind, mem.mib) == ("cuda_max_allocated_MiB", 3.0)


def test_a_cpu_call_is_timed_on_the_host_clock_even_where_a_card_is_present(fake_cuda):
    """timed(call, 'cpu') and a decoder timed on the CPU never reach for CUDA events (a CPU build
    of torch has none: the calls below would raise)."""
    out, t = timed(lambda: "done", "cpu")
    assert out == "done" and t.wall_s == t.host_s >= 0
    assert fake_cuda == []
    holder = torch.nn.Identity()
    dec = DecodeTimer(holder, "forward", device="cpu")
    assert holder.forward(torch.ones(2)).sum() == 2
    assert dec.take() >= 0 and fake_cuda == []
    dec.remove()
    assert "forward" not in vars(holder)

