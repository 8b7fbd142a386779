"""The CUDA-graph executor's checks on a GPU, runnable without pytest (a bare torch image).

    python -m stagevar.tools.gpu_checks                 # every check: one PASS / FAIL / SKIP line each
    python -m stagevar.tools.gpu_checks --json out.json # ... each result appended to the file as it lands
    python -m stagevar.tools.gpu_checks --dry-run       # list the checks; runs nothing (any machine)

Each check builds small reference models on the device, runs graphed and eager calls, and raises
``AssertionError`` saying what differs. ``tests/test_executors.py`` runs the same functions under
pytest on CUDA, and the ones that need no real CUDA graph on a CPU with a stand-in backend, so a
check that cannot fail shows there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Any, Callable, List, Optional, Tuple

import torch

import stagevar
from ..api import _ATTR
from ..executors import GraphFallbackWarning
from ..models import reference_infinity, reference_star, reference_var

WORDS = "a red fox runs over the deep snow at night under the bright stars".split()


def _engine(model: Any):
    return getattr(model, _ATTR).engine


def _precision(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _graphed(fn: Callable[[], Any]) -> Any:
    """``fn()``, a graphs fallback turned into an error (the check expects graphs to hold)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", GraphFallbackWarning)
        return fn()


def _eager(model: Any, config: str, kw: dict, **extra) -> Any:
    with stagevar.accelerated(model, config, execution="eager", **extra):
        return model.autoregressive_infer_cfg(**kw)


def _var_kwargs(B: int, seed: int, device: torch.device, **extra) -> dict:
    return dict(B=B, label_B=(torch.arange(B, device=device) + seed) % 10, g_seed=seed, cfg=3.0, **extra)


def _infinity_kwargs(bundle: Any, prompts: List[str], seed: int, **extra) -> dict:
    sched = bundle.schedule("1:1")
    K = len(sched)
    kw = dict(vae=bundle.vae, scale_schedule=sched, label_B_or_BLT=bundle.encode(prompts), B=len(prompts),
              g_seed=seed, cfg_list=[3.0] * K, tau_list=[0.8] * K, top_k=0, top_p=0.0, ret_img=True)
    kw.update(extra)
    return kw


def _prompts(*lengths: int) -> List[str]:
    return [" ".join(WORDS[:n]) for n in lengths]


def _same_as_eager(model: Any, kws: List[dict], configs: List[str], out: Callable[[Any], Any],
                   unpatched: Optional[List[Any]] = None) -> str:
    """Every config graphed (``capture_after=2``) equals it eager (``none``: the unpatched call)."""
    for config in configs:
        against_unpatched = config == "none" and unpatched is not None
        want = unpatched if against_unpatched else [out(_eager(model, config, kw)) for kw in kws]
        what = "the unpatched call" if against_unpatched else "the eager call"
        stagevar.accelerate(model, config, execution="graphs", capture_after=2, text_buckets=())
        try:
            got = [_graphed(lambda kw=kw: out(model.autoregressive_infer_cfg(**kw))) for kw in kws]
            rep = stagevar.last_report(model)
            assert rep.executor == "graphs", f"{config}: the last call ran {rep.executor} ({rep.note})"
            for i, (g, w) in enumerate(zip(got, want)):
                assert torch.equal(g, w), f"{config}: call {i} differs from {what}"
        finally:
            stagevar.restore(model)
    return f"{len(configs)} configs x {len(kws)} calls"


# -- the checks -------------------------------------------------------------------------------------
def exact_var(device: torch.device) -> str:
    """VAR: graphed ``none`` equals the unpatched call, graphed presets their eager calls (fp32 and
    bf16 autocast, B = 1 and 4, the filtered sampler at B = 4)."""
    model = reference_var("small", device=device)
    done = []
    for bf16 in (False, True):
        for B in (1, 4):
            top = dict(top_k=5, top_p=0.9) if B > 1 else {}
            kws = [_var_kwargs(B, s, device, **top) for s in (0, 1, 2)]
            with torch.no_grad(), _precision(device, bf16):
                unpatched = [model.autoregressive_infer_cfg(**kw) for kw in kws]
                done.append(_same_as_eager(model, kws, ["none", "var-d16", "stagevar-tiny-var"], lambda o: o, unpatched))
    return f"{len(done)} settings: " + done[0]


def exact_infinity(device: torch.device) -> str:
    """Infinity: as :func:`exact_var` (one text length per B, so one key for three seeds)."""
    bundle = reference_infinity("tiny", device=device)
    model = bundle.model
    for bf16 in (False, True):
        for B in (1, 4):
            kws = [_infinity_kwargs(bundle, _prompts(*[4 + b for b in range(B)]), s) for s in (0, 1, 2)]
            with torch.no_grad(), _precision(device, bf16):
                unpatched = [model.autoregressive_infer_cfg(**kw)[2] for kw in kws]
                _same_as_eager(model, kws, ["none", "infinity-2b", "infinity-2b-paper"], lambda o: o[2], unpatched)
    return "fp32 and bf16, B=1 and 4, none / infinity-2b / infinity-2b-paper"


def exact_star(device: torch.device) -> str:
    """STAR: graphed ``none`` equals the unpatched call, graphed ``star-d16`` its eager call."""
    bundle = reference_star("tiny", device=device)
    model = bundle.model
    kws = [dict(B=2, label_B=None, g_seed=s, cfg=3.0, **bundle.encode(_prompts(3, 6))) for s in (0, 1, 2)]
    for bf16 in (False, True):
        with torch.no_grad(), _precision(device, bf16):
            unpatched = [model.autoregressive_infer_cfg(**kw) for kw in kws]
            _same_as_eager(model, kws, ["none", "star-d16"], lambda o: o, unpatched)
    return "fp32 and bf16, B=2, none / star-d16"


def _unchanged_after_calls(model: Any, config: str, kws: List[dict], tensors: Callable[[dict], List[torch.Tensor]],
                           what: str) -> None:
    saved = [[t.clone() for t in tensors(kw)] for kw in kws]
    stagevar.accelerate(model, config, execution="graphs", capture_after=2, text_buckets=())
    try:
        for kw in kws:
            _graphed(lambda kw=kw: model.autoregressive_infer_cfg(**kw))
        assert stagevar.last_report(model).executor == "graphs", stagevar.last_report(model).note
        for kw, before in zip(kws, saved):
            assert all(torch.equal(a, b) for a, b in zip(tensors(kw), before)), f"a caller's {what} was written"
    finally:
        stagevar.restore(model)


def caller_tensors_unchanged(device: torch.device) -> str:
    """The tensors a caller passes are never the graphs' static inputs, even where the call state
    keeps them as they are (Infinity's cu_seqlens without CFG, STAR's text and mask): later calls
    leave them as they were."""
    model = reference_var("small", device=device)
    _unchanged_after_calls(model, "var-d16", [_var_kwargs(2, s, device) for s in range(4)], lambda kw: [kw["label_B"]],
                           "label tensor")
    bundle = reference_infinity("tiny", device=device)
    K = len(bundle.schedule("1:1"))
    for cfg in (1.0, 3.0):  # cfg 1 everywhere: one branch, the packed text's cu_seqlens_k used as passed
        kws = [_infinity_kwargs(bundle, [" ".join(WORDS[i:i + 4]), " ".join(WORDS[i + 1:i + 7])], i,
                                cfg_list=[cfg] * K) for i in range(4)]
        _unchanged_after_calls(bundle.model, "none" if cfg == 1.0 else "infinity-2b", kws,
                               lambda kw: [t for t in kw["label_B_or_BLT"] if isinstance(t, torch.Tensor)], "text tensor")
    star = reference_star("tiny", device=device)
    kws = [dict(B=2, label_B=None, g_seed=s, cfg=3.0, **star.encode(_prompts(2 + s, 5))) for s in range(4)]
    _unchanged_after_calls(star.model, "star-d16", kws,
                           lambda kw: [kw["encoder_hidden_states"], kw["encoder_attention_mask"], kw["encoder_pool_feat"]],
                           "text tensor")
    return "VAR labels, Infinity text (with and without CFG), STAR text and mask, after 4 calls each"


def model_rng_after_replay(device: torch.device) -> str:
    """``model.rng`` after a replayed call is where the same eager call leaves it."""
    model = reference_var("small", device=device)
    model.rng = torch.Generator(device=device)  # on the device, as upstream's first call leaves it: the one replays use
    kw = _var_kwargs(2, 5, device)
    _eager(model, "var-d16", kw)
    want = model.rng.get_state()
    stagevar.accelerate(model, "var-d16", execution="graphs", capture_after=2)
    for _ in range(3):
        _graphed(lambda: model.autoregressive_infer_cfg(**kw))
    assert stagevar.last_report(model).executor == "graphs"
    assert torch.equal(model.rng.get_state(), want), "model.rng after a replay differs from after the eager call"
    stagevar.restore(model)
    return "equal"


def eviction_with_replays_in_flight(device: torch.device) -> str:
    """``max_keys=1`` and shapes alternating with nothing read in between: a key's graphs are
    dropped only once its queued replays have run, so every output equals its eager call."""
    model = reference_var("small", device=device)
    plan = [1, 1, 1, 2, 2, 2, 1, 1, 1, 2]
    kws = [_var_kwargs(B, s, device) for s, B in enumerate(plan)]
    want = [_eager(model, "var-d16", kw) for kw in kws]
    stagevar.accelerate(model, "var-d16", execution="graphs", capture_after=2, max_keys=1)
    got = [model.autoregressive_infer_cfg(**kw) for kw in kws]  # nothing synchronises until the comparison
    replays = sum(c["replays"] for c in _engine(model).executor.counts().values())
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"call {i} (B={plan[i]}) differs from its eager call"
    stagevar.restore(model)
    return f"{len(plan)} calls, the kept key replayed {replays} time(s)"


def infinity_buckets(device: torch.device) -> str:
    """Three prompt lengths in one bucket under graphs: every output equals the unpadded eager
    call's, whether the first call's check kept bucketing (one key, replays) or turned it off."""
    bundle = reference_infinity("tiny", device=device)
    model = bundle.model
    kws = [_infinity_kwargs(bundle, _prompts(n, n + 2), s) for s in (0, 1) for n in (2, 4, 7)]
    out = []
    for bf16 in (False, True):
        with torch.no_grad(), _precision(device, bf16):
            want = [_eager(model, "infinity-2b", kw, text_buckets=())[2] for kw in kws]
            stagevar.accelerate(model, "infinity-2b", execution="graphs", capture_after=2, text_buckets=(16,))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", stagevar.TextBucketWarning)
                for _ in range(2):
                    got = [_graphed(lambda kw=kw: model.autoregressive_infer_cfg(**kw)[2]) for kw in kws]
                    for i, (g, w) in enumerate(zip(got, want)):
                        assert torch.equal(g, w), f"call {i} differs from the unpadded eager call"
            engine = _engine(model)
            counts = list(engine.executor.counts().values())
            if not engine.buckets_off:
                assert len(counts) == 1 and counts[0]["replays"] >= 6, counts
                out.append(f"{'bf16' if bf16 else 'fp32'}: kept, one key, {counts[0]['replays']} replays")
            else:
                out.append(f"{'bf16' if bf16 else 'fp32'}: off ({engine.buckets_off[:120]})")
            stagevar.restore(model)
    return "; ".join(out)


def random_labels(device: torch.device) -> str:
    """``label_B=None`` (labels drawn in setup from the call's generator) replays as eager."""
    model = reference_var("small", device=device)
    kws = [dict(_var_kwargs(4, s, device), label_B=None) for s in (0, 1, 2)]
    want = [_eager(model, "var-d16", kw) for kw in kws]
    stagevar.accelerate(model, "var-d16", execution="graphs", capture_after=2)
    got = [_graphed(lambda kw=kw: model.autoregressive_infer_cfg(**kw)) for kw in kws]
    assert stagevar.last_report(model).executor == "graphs"
    assert all(torch.equal(g, w) for g, w in zip(got, want)), "a call with random labels differs from eager"
    stagevar.restore(model)
    return "3 seeds"


def forced_capture_failure(device: torch.device) -> str:
    """A scale that synchronises the device (a user model that syncs) cannot be captured: one
    warning, the eager result, and afterwards the current stream, the default generator and the
    model's generator work as before; that key runs eagerly and correctly, another key captures."""
    model = reference_var("small", device=device)
    kw = _var_kwargs(2, 0, device)
    want = _eager(model, "var-d16", kw)
    stagevar.accelerate(model, "var-d16", execution="graphs", capture_after=2)
    adapter = _engine(model).adapter
    real = type(adapter).predict

    def syncing(st, si, x):
        if si == 2:
            torch.cuda.synchronize()
        return real(adapter, st, si, x)

    adapter.predict = syncing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [model.autoregressive_infer_cfg(**kw) for _ in range(3)]
    fallbacks = [w for w in caught if issubclass(w.category, GraphFallbackWarning)]
    assert len(fallbacks) == 1, f"{len(fallbacks)} fallback warnings"
    assert all(torch.equal(o, want) for o in outs), "a call around the failed capture differs from eager"
    assert torch.cuda.current_stream(device) == torch.cuda.default_stream(device), "the capture stream stayed current"
    torch.randn(8, device=device).sum().item()  # the default generator draws
    torch.multinomial(torch.ones(4, device=device), 2).sum().item()
    rng = getattr(model, "rng", None)
    if isinstance(rng, torch.Generator) and rng.device.type == "cuda":
        torch.rand(4, device=rng.device, generator=rng).sum().item()
    assert stagevar.last_report(model).executor == "eager"
    del adapter.predict
    kw2 = _var_kwargs(3, 1, device)
    want2 = _eager(model, "var-d16", kw2)
    stagevar.accelerate(model, "var-d16", execution="graphs", capture_after=2)
    got = [_graphed(lambda: model.autoregressive_infer_cfg(**kw2)) for _ in range(3)]
    assert stagevar.last_report(model).executor == "graphs" and all(torch.equal(g, want2) for g in got)
    stagevar.restore(model)
    return f"fallback: {str(fallbacks[0].message)[:140]}"


def release_lowers_reserved(device: torch.device) -> str:
    """``release_graphs`` frees at least the pool the report gave."""
    model = reference_var("small", device=device)
    stagevar.accelerate(model, "var-d16", execution="graphs", capture_after=2)
    kw = _var_kwargs(8, 0, device)
    for _ in range(3):
        _graphed(lambda: model.autoregressive_infer_cfg(**kw))
    rep = stagevar.last_report(model)
    assert rep.executor == "graphs" and rep.pool_bytes > 0, (rep.executor, rep.pool_bytes)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    stagevar.release_graphs(model)
    freed = before - torch.cuda.memory_reserved(device)
    assert freed >= rep.pool_bytes, (freed, rep.pool_bytes)
    stagevar.restore(model)
    return f"pool {rep.pool_bytes / 2 ** 20:.1f} MiB, freed {freed / 2 ** 20:.1f} MiB"


#: ``(name, check, needs real CUDA graphs)``, in the order they run.
CHECKS: List[Tuple[str, Callable[[torch.device], str], bool]] = [
    ("exact_var", exact_var, False),
    ("exact_infinity", exact_infinity, False),
    ("exact_star", exact_star, False),
    ("forced_capture_failure", forced_capture_failure, True),
    ("caller_tensors_unchanged", caller_tensors_unchanged, False),
    ("eviction_with_replays_in_flight", eviction_with_replays_in_flight, False),
    ("infinity_buckets", infinity_buckets, False),
    ("model_rng_after_replay", model_rng_after_replay, False),
    ("random_labels", random_labels, False),
    ("release_lowers_reserved", release_lowers_reserved, True),
]


def run_checks(device: torch.device, names: Optional[List[str]] = None, json_path: Optional[str] = None) -> int:
    """Run the checks on ``device``, one line each as it ends; returns how many failed."""
    results, failed = [], 0
    for name, check, _ in CHECKS:
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        try:
            detail, verdict = check(device), "PASS"
        except Exception as e:  # noqa: BLE001 -- a failing check reports and the next one runs
            detail, verdict = f"{type(e).__name__}: {str(e)[:300]}", "FAIL"
            failed += 1
        secs = time.perf_counter() - t0
        print(f"{verdict}  {name} ({secs:.1f} s): {detail}", flush=True)
        results.append(dict(check=name, verdict=verdict, detail=detail, seconds=secs))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(results, f, indent=1)
    return failed


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here, rewritten after every check")
    ap.add_argument("--only", nargs="+", default=None, choices=[c[0] for c in CHECKS])
    ap.add_argument("--dry-run", action="store_true", help="list the checks and exit")
    args = ap.parse_args(argv)
    if args.dry_run:
        print("dry run: " + ", ".join(c[0] for c in CHECKS if not args.only or c[0] in args.only))
        return 0
    if not torch.cuda.is_available():
        for name, _, _ in CHECKS:
            print(f"SKIP  {name}: no CUDA device")
        return 0
    return 1 if run_checks(torch.device("cuda"), args.only, args.json) else 0


if __name__ == "__main__":
    sys.exit(main())
