"""Per-scale statistics of one generation call: the report, the timeline its times come from, and
the FLOP model its work figures come from (derived from the plan alone, no device values)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, List, Tuple

import torch

if TYPE_CHECKING:
    from .plan import ScalePlan


SKIPPING_LABEL = "[scale skipping ON]"  # wherever a result comes from a call that skipped scales


def block_flops(rows: int, n: int, kv_len: int, C: int) -> float:
    """FLOP model of one block on ``n`` tokens attending to ``kv_len`` keys: QKV, output
    projection and a 4C MLP (``24 C^2`` per token) plus attention (``4 C kv_len`` per token).
    Cross-attention to text and AdaLN are not counted."""
    return rows * n * (24.0 * C * C + 4.0 * C * kv_len)


class Timeline:
    """Marks between the parts of a call, without stalling the device: on CUDA, events recorded on
    the current stream and read only when :meth:`seconds` is called; elsewhere, the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.current_stream(device) if self.cuda else None
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(self.stream)
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> List[float]:
        """Time between consecutive marks (waits for the last event on CUDA)."""
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


@dataclass(frozen=True)
class PlanStats:
    """Per-scale bookkeeping derived from the plan alone (no device values)."""

    rows: Tuple[int, ...]                     # rows run per scale (0 when skipped)
    tokens: Tuple[Tuple[int, ...], ...]       # tokens per unit per scale
    gflops: Tuple[float, ...]
    cache_tokens: Tuple[Tuple[int, ...], ...]  # per scale, per block: tokens held after it
    intact_rows: int


def plan_stats(plans: List["ScalePlan"], units: List[Tuple[int, int]], rows0: int, C: int) -> PlanStats:
    """Rows, tokens, FLOP model and expected KV-cache lengths of a call, from its plan."""
    n_blocks = units[-1][1] if units else 0
    held = [0] * n_blocks
    rows_l, tokens_l, flops_l, cache_l = [], [], [], []
    branch = "both"
    for p in plans:
        if p.skipped:
            rows_l.append(0)
            tokens_l.append(())
            flops_l.append(0.0)
            cache_l.append(tuple(held))
            continue
        branch = p.branch
        rows = rows0 if branch == "both" else rows0 // 2
        toks, flops = [], 0.0
        for (lo, hi), n in zip(units, p.unit_tokens(len(units))):
            for j in range(lo, hi):
                held[j] += n
                flops += block_flops(rows, n, held[j], C)
            toks.append(n)
        rows_l.append(rows)
        tokens_l.append(tuple(toks))
        flops_l.append(flops / 1e9)
        cache_l.append(tuple(held))
    return PlanStats(tuple(rows_l), tuple(tokens_l), tuple(flops_l), tuple(cache_l), rows0)


@dataclass
class ScaleStats:
    """What ran at one scale.

    ``tokens`` holds, per low-rank unit, the tokens that unit computed (``M`` when intact);
    ``rows`` is the batch rows run (``2B`` with CFG, ``B`` with one branch, 0 when skipped);
    ``gflops`` the FLOP model of the scale's blocks (see :func:`block_flops`).
    """

    index: int
    hw: Tuple[int, int]
    mode: str
    rows: int
    tokens: Tuple[int, ...]
    time_s: float
    gflops: float = 0.0

    @property
    def M(self) -> int:
        return self.hw[0] * self.hw[1]

    @property
    def token_rows(self) -> float:
        """Rows times the mean tokens per unit: the scale's share of transformer work."""
        return self.rows * (sum(self.tokens) / len(self.tokens)) if self.tokens else 0.0


@dataclass
class Report:
    """Statistics of the last accelerated call: a printable table and :meth:`to_dict`.

    On CUDA the times come from events recorded during the call and are read (waiting for the
    device) only when the report is read, so the call itself never synchronises.

    ``executor`` names what launched the scales (``"eager"`` or ``"graphs"``); ``note`` says why
    a graph-capable call ran eager (first call of its key, unseeded call, fallback);
    ``host_s`` is the host time from entry until the call returned (no sync inside);
    ``capture_s`` / ``pool_bytes`` the CUDA-graph capture time and pool size of the key, if any.
    """

    config_name: str
    batch_size: int
    device: str
    scales: List[ScaleStats] = field(default_factory=list)
    loop_s: float = 0.0
    decode_s: float = 0.0
    skipping: bool = False
    intact_rows: int = 0  # rows the call runs when nothing is cut (2B with CFG, B without)
    executor: str = "eager"
    note: str = ""
    config_source: str = "given"
    host_s: float = 0.0
    capture_s: float = 0.0
    pool_bytes: int = 0
    key_counts: dict = field(default_factory=dict)  # graph executor: this call's key's calls, captures, replays, eager
    text: Tuple[int, int, str] = (0, 0, "")  # text-conditioned: (longest text, bucket padded to or 0, why not)
    timeline: Any = field(default=None, repr=False, compare=False)

    def resolve(self) -> "Report":
        """Read the call's timeline (once): per-scale times, loop and decode time."""
        if self.timeline is None:
            return self
        secs = self.timeline.seconds()
        self.timeline = None
        n = len(self.scales)
        for s, t in zip(self.scales, secs[:n]):
            s.time_s = t
        self.loop_s = float(sum(secs[:n]))
        self.decode_s = float(sum(secs[n:]))
        return self

    @property
    def total_s(self) -> float:
        return self.loop_s + self.decode_s

    @property
    def token_rows(self) -> float:
        return sum(s.token_rows for s in self.scales)

    @property
    def gflops(self) -> float:
        return sum(s.gflops for s in self.scales)

    @property
    def intact_token_rows(self) -> float:
        """What the same schedule costs with every row the call started with and every token."""
        return float(sum(self.intact_rows * s.M for s in self.scales))

    def to_dict(self) -> dict:
        self.resolve()
        return {
            "config": self.config_name, "config_source": self.config_source, "batch_size": self.batch_size, "device": self.device,
            "executor": self.executor, "note": self.note, "host_s": self.host_s, "capture_s": self.capture_s,
            "pool_bytes": self.pool_bytes, "key_counts": dict(self.key_counts),
            "text_tokens": self.text[0], "text_bucket": self.text[1], "text_note": self.text[2],
            "loop_s": self.loop_s, "decode_s": self.decode_s, "total_s": self.total_s,
            "skipping": self.skipping, "token_rows": self.token_rows, "intact_token_rows": self.intact_token_rows, "gflops": self.gflops,
            "scales": [dict(asdict(s), M=s.M, token_rows=s.token_rows) for s in self.scales],
        }

    def __str__(self) -> str:
        self.resolve()
        head = (f"stagevar report: config={self.config_name!r} [{self.config_source}] B={self.batch_size} device={self.device} "
                f"executor={self.executor}{' (' + self.note + ')' if self.note else ''}"
                f"{'  ' + SKIPPING_LABEL if self.skipping else ''}")
        lines = [head, f"{'scale':>5} {'h x w':>8} {'M':>6} {'rows':>5} {'tokens/unit':>16} {'ms':>9}  mode"]
        for s in self.scales:
            toks = _tokens_str(s.tokens, s.M)
            lines.append(f"{s.index:>5} {s.hw[0]:>3} x{s.hw[1]:>3} {s.M:>6} {s.rows:>5} {toks:>16} {s.time_s * 1e3:>9.2f}  {s.mode}")
        frac = self.token_rows / self.intact_token_rows if self.intact_token_rows else 0.0
        lines.append(f"transformer loop {self.loop_s * 1e3:.1f} ms, decode {self.decode_s * 1e3:.1f} ms; "
                     f"token-rows computed {self.token_rows:.0f} of {self.intact_token_rows:.0f} intact ({frac:.1%}); "
                     f"FLOP model {self.gflops:.1f} GFLOP")
        issue = f"host issued the call in {self.host_s * 1e3:.1f} ms"
        if self.executor == "graphs":
            issue += (f"; graphs captured once in {self.capture_s * 1e3:.0f} ms, "
                      f"shared pool grown {self.pool_bytes / 2 ** 20:.0f} MiB by this call shape")
        if self.key_counts:
            k = self.key_counts
            issue += (f"; this call shape: {k['calls']} calls, {k['captures']} capture(s), {k['replays']} replays, "
                      f"{k['eager']} eager")
        lines.append(issue)
        if self.text[0]:
            n, bucket, why = self.text
            lines.append(f"text: {n} tokens" + (f", padded to bucket {bucket}" if bucket else "") + (f" ({why})" if why else ""))
        return "\n".join(lines)


def _tokens_str(tokens: Tuple[int, ...], M: int) -> str:
    if not tokens:
        return "-"
    if all(t == M for t in tokens):
        return str(M)
    if len(set(tokens)) == 1:
        return f"{tokens[0]} (all)"
    return f"{min(tokens)}..{max(tokens)}"

