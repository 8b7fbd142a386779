"""What the reference-model benchmarks in this folder share: their timing options, the checks made
before anything is built, and one timed run of methods with the first config's per-scale report."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, List, Optional

import torch

import stagevar
from stagevar.tools.bench import interleaved
from stagevar.executors import EXECUTIONS
from stagevar.tools.runner import check_executions


def parser(doc: str, rounds: Optional[int] = None) -> argparse.ArgumentParser:
    """A parser with ``--rounds``, ``--warmup``, ``--execution``, ``--json``, ``--device``, ``--bf16``;
    ``rounds``: the default number of timed rounds (None: 5 on CUDA, 2 on a CPU)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=rounds,
                    help="timed interleaved rounds" + (" (default: 5 on CUDA, 2 on a CPU)" if rounds is None else ""))
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed calls per method and executor first (graphs: at least 2, the eager call and the "
                         "capture)")
    ap.add_argument("--execution", nargs="+", default=["eager"], choices=list(EXECUTIONS),
                    help="executors to time every method under (graphs: CUDA only)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="run under torch.autocast(bfloat16), as upstream inference does")
    ap.add_argument("--dry-run", action="store_true",
                    help="check the arguments and imports, build and run nothing (benchmarks/gpu.sh --dry-run)")
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, refuse executors the device cannot run (before any model is built), fill ``--rounds``.
    With ``--dry-run``: the arguments parsed and the imports done, exit 0."""
    args = ap.parse_args()
    if args.dry_run:
        print(f"dry run: {ap.prog} {' '.join(sys.argv[1:])}: arguments and imports ok")
        sys.exit(0)
    try:
        check_executions(args.execution, args.device)
    except stagevar.GraphsUnavailableError as e:
        sys.exit(str(e))
    if args.rounds is None:
        args.rounds = 5 if torch.device(args.device).type == "cuda" else 2
    return args


def precision(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Inference mode, under bf16 autocast with ``--bf16``."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16))
    return stack


def time_with_report(model: Any, kw: dict, methods: List[tuple], args: argparse.Namespace) -> List[dict]:
    """:func:`~stagevar.bench.interleaved` rows of ``methods``, then one more call under the first
    config (``methods[1]``) to print its per-scale report; the model is left unpatched."""
    try:
        with precision(args):
            rows = interleaved(model, kw, methods, args.rounds, warmup=args.warmup, executions=args.execution,
                               progress=True)
            stagevar.accelerate(model, methods[1][1])
            model.autoregressive_infer_cfg(**kw)
            print(stagevar.last_report(model))
    finally:
        stagevar.restore(model)
    return rows


def write_json(path: Optional[str], obj: Any) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2)
