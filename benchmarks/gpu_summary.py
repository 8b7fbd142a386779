"""The GPU targets against what benchmarks/gpu.sh measured: one line per target, its figure, PASS,
FAIL, or "not measured" (a step that did not run, or a row missing from its JSON).

    python benchmarks/gpu_summary.py OUT_DIR

Reads the JSON files gpu.sh's steps write (``--json``) in OUT_DIR. Every figure is a median of
interleaved calls after the capture call, from the rows ``stagevar.tools.bench.interleaved``
returns; the unpatched call's row is the method ``unpatched``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple


def _rows(path: str, batch: Optional[int] = None) -> Optional[List[dict]]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    for entry in data if isinstance(data, list) else [data]:
        if batch is None or entry.get("batch") == batch:
            return entry.get("rows")
    return None


def _real(rows: Optional[List[dict]], execution: str, prompts: str) -> Optional[dict]:
    return next((r for r in rows or [] if r["execution"] == execution and r.get("prompts") == prompts), None)


def _row(rows: Optional[List[dict]], method: str, execution: str) -> Optional[dict]:
    return next((r for r in rows or [] if r["method"] == method and r["execution"] == execution), None)


Check = Tuple[str, Callable[[Dict[str, Any]], Tuple[Optional[str], Optional[bool]]]]


def _ratio(a: Optional[dict], b: Optional[dict], key: str = "e2e_ms") -> Optional[float]:
    return None if a is None or b is None else b[key] / a[key]


def checks(out: str) -> List[Tuple[str, Optional[str], Optional[bool]]]:
    """``(target, figure or None, passed or None)`` for every target."""
    var1 = _rows(os.path.join(out, "var_d16_b1.json"), 1)
    inf1 = _rows(os.path.join(out, "inf_2b_b1.json"))
    var64 = _rows(os.path.join(out, "var_d16_b8_64.json"), 64)
    res = []

    none_g, base = _row(var1, "none (loop overhead)", "graphs"), _row(var1, "unpatched", "eager")
    x = _ratio(none_g, base)
    exact = None if none_g is None else none_g.get("exact")
    res.append(("VAR-d16 B=1: graphed none bit-identical to eager and >= 3x the unpatched call",
                None if x is None else f"{x:.2f}x, exact={exact}", None if x is None else bool(exact) and x >= 3))

    inf_g, inf_none_g, inf_base = (_row(inf1, "infinity-2b", "graphs"), _row(inf1, "none", "graphs"),
                                   _row(inf1, "unpatched", "eager"))
    s = None if inf_g is None else inf_g["e2e_ms"] / 1e3
    res.append(("Infinity-2B 1024^2 B=1: graphed infinity-2b <= 0.25 s per image",
                None if s is None else f"{s:.3f} s", None if s is None else s <= 0.25))
    x = _ratio(inf_g, inf_base)
    res.append(("Infinity-2B 1024^2 B=1: graphed infinity-2b >= 4x the unpatched call",
                None if x is None else f"{x:.2f}x", None if x is None else x >= 4))
    x = _ratio(inf_g, inf_none_g)
    res.append(("Infinity-2B 1024^2 B=1: graphed infinity-2b >= 2x graphed none",
                None if x is None else f"{x:.2f}x", None if x is None else x >= 2))

    inf_e = _row(inf1, "infinity-2b", "eager")
    pool, peak = (None if inf_g is None else inf_g.get("pool_mib")), (None if inf_e is None else inf_e.get("peak_mib"))
    x = None if not pool or not peak else pool / peak
    res.append(("Infinity-2B 1024^2 B=1: graph pool <= 1.5x the eager call's peak allocated memory",
                None if x is None else f"pool {pool:.0f} MiB / eager peak {peak:.0f} MiB = {x:.2f}",
                None if x is None else x <= 1.5))

    real = _rows(os.path.join(out, "inf_2b_real_use.json"))
    varied_g, fixed_g, varied_e = (_real(real, "graphs", "varied"), _real(real, "graphs", "fixed"),
                                   _real(real, "eager", "varied"))
    x = _ratio(fixed_g, varied_g)  # varied over fixed
    res.append(("real use, 24 prompts of varied lengths: graphed infinity-2b within 10% of the fixed prompt's call",
                None if x is None else f"varied/fixed {x:.3f} ({varied_g['replayed']} of {varied_g['calls']} "
                                       f"replayed, buckets {varied_g['buckets']})",
                None if x is None else x <= 1.10))
    x = _ratio(varied_g, varied_e)
    res.append(("real use: graphed infinity-2b >= 2x eager infinity-2b",
                None if x is None else f"{x:.2f}x", None if x is None else x >= 2))

    v_g, v_none_g = _row(var64, "var-d16", "graphs"), _row(var64, "none (loop overhead)", "graphs")
    x = _ratio(v_g, v_none_g)
    res.append(("VAR-d16 B=64: graphed var-d16 >= 1.6x graphed none",
                None if x is None else f"{x:.2f}x", None if x is None else x >= 1.6))
    return res


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print("== summary: the GPU targets")
    path = os.path.join(argv[0], "checks.json")
    if os.path.exists(path):
        with open(path) as f:
            checks_run = json.load(f)
        passed = sum(c["verdict"] == "PASS" for c in checks_run)
        failed = [c["check"] for c in checks_run if c["verdict"] != "PASS"]
        print(f"{'PASS' if not failed else 'FAIL':<12} CUDA checks: {passed} of {len(checks_run)} passed"
              + (f" (failed: {', '.join(failed)})" if failed else ""))
    else:
        print(f"{'not measured':<12} CUDA checks (no checks.json)")
    for target, figure, passed in checks(argv[0]):
        verdict = "not measured" if passed is None else "PASS" if passed else "FAIL"
        print(f"{verdict:<12} {target}" + (f": {figure}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
