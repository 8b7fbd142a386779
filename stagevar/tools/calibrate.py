"""calibrate(): measure a model's stages and low-rank structure from its own intact generations.

Per scale ``k`` of the schedule, over the given conditions:

1. **convergence** -- the image decoded from the codes accumulated up to scale ``k`` against the
   final image: PSNR, SSIM (structure) and a feature distance (semantics; pluggable);
2. **condition sensitivity** -- KL divergence between the conditional and unconditional
   branches' token distributions at scale ``k``; and (optional sweep) the PSNR of the final image
   when only the unconditional branch runs from scale ``k`` on, against the intact image;
3. **low rank** -- per unit of blocks, the centred energy rank of the unit's ``M x C`` input at
   several alphas, as a ratio of ``min(M, C)``: mean and std over conditions and batch rows.

:meth:`Calibration.recommend` turns this into a :class:`StageVARConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _args
from ..adapters import adapter_for
from ..config import ConfigError, StageVARConfig
from ..engine import Engine, Observer
from .._files import atomic_path, read_json
from ..presets import preset
from .metrics import feature_distance, lowfreq_features, psnr, ssim

ALPHAS = (0.90, 0.95, 0.96, 0.97, 0.98, 0.99, 0.999)


# --------------------------------------------------------------------------------------------
# low rank
def energy_ranks(x_MC: torch.Tensor, alphas: Sequence[float]) -> List[int]:
    """Smallest ``k`` whose top-``k`` squared singular values of the centred ``x_MC`` reach each alpha.

    Uses the eigenvalues of the smaller Gram matrix (``M x M`` or ``C x C``) in float64.
    """
    x = x_MC.double()
    x = x - x.mean(0, keepdim=True)
    gram = x @ x.t() if x.shape[0] <= x.shape[1] else x.t() @ x
    ev = torch.linalg.eigvalsh(gram).clamp_min(0).flip(0)
    total = ev.sum()
    if total <= 0:
        return [1 for _ in alphas]
    cum = ev.cumsum(0) / total
    idx = torch.searchsorted(cum, torch.tensor(list(alphas), dtype=cum.dtype, device=cum.device)).tolist()
    return [int(min(len(ev), i + 1)) for i in idx]


class _Observer(Observer):
    """Ranks of unit inputs, branch KL and the partial image, per scale."""

    def __init__(self, adapter, alphas):
        self.ad, self.alphas = adapter, alphas
        self.partial: Dict[int, torch.Tensor] = {}
        self.kl: Dict[int, float] = {}
        self.ranks: Dict[int, Dict[int, List[List[float]]]] = {}  # si -> unit -> list of [ratio per alpha]
        self.schedule = None
        self.width: Optional[int] = None

    def unit_input(self, st, si, u, x):
        M, C = x.shape[1], x.shape[2]
        self.width = int(C)
        rows = self.ranks.setdefault(si, {}).setdefault(u, [])
        for row in x:
            rows.append([k / min(M, C) for k in energy_ranks(row, self.alphas)])

    def scale_output(self, st, si, x):
        if self.schedule is None:
            self.schedule = self.ad.schedule(st)
        cond, uncond = self.ad.branch_logits(st, x)
        lp, lq = F.log_softmax(cond.float(), -1), F.log_softmax(uncond.float(), -1)
        self.kl[si] = float((lp.exp() * (lp - lq)).sum(-1).mean())

    def scale_done(self, st, si):
        self.partial[si] = self.ad.decode_partial(st)


class _FinalImage(Observer):
    """Keeps only the image decoded after the last scale run."""

    def __init__(self, adapter):
        self.ad, self.image = adapter, None

    def scale_done(self, st, si):
        if si == len(self.ad.schedule(st)) - 1:
            self.image = self.ad.decode_partial(st)


@dataclass
class Calibration:
    """What :func:`calibrate` measured. Lists are indexed by scale; ``rank_*`` by scale, unit, alpha."""

    family: str
    schedule: List[List[int]]
    unit_blocks: int
    num_conditions: int
    alphas: List[float]
    feature_name: str
    psnr_to_final: List[float]
    ssim_to_final: List[float]
    feature_dist_to_final: List[float]
    kl_cond_uncond: List[float]
    one_branch_psnr: Optional[List[Optional[float]]]
    rank_ratio_mean: List[List[List[float]]]
    rank_ratio_std: List[List[List[float]]]
    generation_kwargs: Dict = field(default_factory=dict)
    #: The model's width ``C`` (the unit inputs' channels): ranks are measured as ratios of
    #: ``min(M, C)``; :meth:`recommend` converts them to the ratios of ``M`` a config holds. None
    #: (a file written before it was recorded): taken as ``C >= M`` at every scale.
    width: Optional[int] = None

    # ---- the stage boundary
    def converged_scale(self, min_psnr: float = 25.0, max_feature_dist: float = 0.02, min_ssim: float = 0.8) -> Optional[int]:
        """First scale from which every later partial image is within the thresholds of the final one."""
        K = len(self.schedule)
        for k in range(K):
            if all(self.psnr_to_final[j] >= min_psnr and self.feature_dist_to_final[j] <= max_feature_dist
                   and self.ssim_to_final[j] >= min_ssim for j in range(k, K)):
                return k
        return None

    def recommend(self, alpha: float = 0.96, min_psnr: float = 25.0, max_feature_dist: float = 0.02,
                  min_ssim: float = 0.8, branch: str = "uncond", reducer: str = "gaussian",
                  max_rank_ratio: Optional[float] = 0.3) -> StageVARConfig:
        """A config: the refinement stage starts at the first scale after semantics (feature
        distance <= ``max_feature_dist``) and structure (PSNR >= ``min_psnr`` dB and SSIM >=
        ``min_ssim`` against the final image) have converged, with the measured rank table at
        ``alpha``. If they never converge before the last scale, only the last scale is refined.

        A scale whose measured ratio (mean over units) exceeds ``max_rank_ratio`` is not low rank
        in the paper's sense (its Infinity-2B table stays at or below 0.26): it runs one branch at
        full rank. Random projection with representative restoration writes outputs of mixed
        tokens at the representative positions, so at high ranks it changes more of the map than
        it saves (measured on the bundled model, BENCHMARKS.md). ``None`` keeps every scale's
        measured rank."""
        if alpha not in self.alphas:
            raise ConfigError(f"alpha={alpha} was not measured; measured alphas: {self.alphas}")
        K = len(self.schedule)
        conv = self.converged_scale(min_psnr, max_feature_dist, min_ssim)
        start = K - 1 if conv is None else min(max(conv + 1, 1), K - 1)
        a = self.alphas.index(alpha)
        table = {}
        for si in range(start, K):
            ratios = [units[a] for units in self.rank_ratio_mean[si]]
            if max_rank_ratio is None or sum(ratios) / len(ratios) <= max_rank_ratio:
                M = self.schedule[si][1] * self.schedule[si][2]
                of_m = min(M, self.width) / M if self.width else 1.0  # measured of min(M, C); a config's are of M
                table[si] = {alpha: [r * of_m for r in ratios]}
        return StageVARConfig(refine_start=start, branch=branch, rank_table=table, alpha=alpha if table else None,
                              unit_blocks=self.unit_blocks, reducer=reducer, name=f"calibrated-a{alpha}")

    # ---- persistence and display
    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON (to a temporary name, then renamed: never half-written)."""
        with atomic_path(os.fspath(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path) -> "Calibration":
        """Read a calibration written by :meth:`save`; a file that is not one is refused naming the
        file and the field."""
        how = "write one with stagevar.calibrate(...).save(path) or `stagevar calibrate --out`"
        data = read_json(path, "a stagevar calibration", how)
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            extra = sorted(map(str, set(data) - known)) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} is not a stagevar calibration (unknown keys {extra}); {how}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if required - set(data):
            raise ValueError(f"{path} is not a complete stagevar calibration (missing {sorted(required - set(data))}); "
                             f"{how}")
        schedule = data["schedule"]
        if not isinstance(schedule, list):
            raise ValueError(f"{path}: 'schedule' must be a list of [t, h, w] scales, got {type(schedule).__name__}")
        for name in ("psnr_to_final", "ssim_to_final", "feature_dist_to_final", "kl_cond_uncond", "rank_ratio_mean"):
            if name in data and (not isinstance(data[name], list) or len(data[name]) != len(schedule)):
                raise ValueError(f"{path}: '{name}' must be a list with one entry per scale ({len(schedule)}); "
                                 f"the file was cut short or edited. {how}")
        return cls(**data)

    def __str__(self) -> str:
        a96 = self.alphas.index(0.96) if 0.96 in self.alphas else len(self.alphas) // 2
        lines = [f"calibration ({self.family}, {self.num_conditions} conditions, features: {self.feature_name})",
                 f"{'scale':>5} {'h x w':>8} {'PSNR':>7} {'SSIM':>6} {'feat':>7} {'KL c|u':>8} {'1-br PSNR':>9} "
                 f"{'rank@' + str(self.alphas[a96]):>11}"]
        for si, (t, h, w) in enumerate(self.schedule):
            ob = "-" if not self.one_branch_psnr or self.one_branch_psnr[si] is None else f"{self.one_branch_psnr[si]:.1f}"
            rk = sum(u[a96] for u in self.rank_ratio_mean[si]) / len(self.rank_ratio_mean[si])
            lines.append(f"{si:>5} {h:>3} x{w:>3} {self.psnr_to_final[si]:>7.1f} {self.ssim_to_final[si]:>6.3f} "
                         f"{self.feature_dist_to_final[si]:>7.4f} {self.kl_cond_uncond[si]:>8.4f} {ob:>9} {rk:>11.3f}")
        conv = self.converged_scale()
        lines.append(f"converged (PSNR>=25, SSIM>=0.8, feature distance<=0.02) from scale: {conv}")
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """The per-scale curves with the recommended boundary (needs matplotlib)."""
        from .figures import matplotlib_figure

        Figure = matplotlib_figure()  # no pyplot: the user's backend and figures untouched
        if Figure is None:
            raise ImportError("Calibration.plot needs matplotlib: pip install 'stagevar[plot]'")
        K = len(self.schedule)
        xs = list(range(K))
        start = self.recommend(alpha=self.alphas[0]).refine_start
        fig = Figure(figsize=(14, 3.8))
        axes = fig.subplots(1, 3)
        axes[0].plot(xs, [min(v, 60.0) for v in self.psnr_to_final], "o-", label="PSNR to final (dB, shown <= 60)")
        axes[0].set_title("structure")
        ax2 = axes[0].twinx()
        ax2.plot(xs, self.ssim_to_final, "s--", color="tab:orange", label="SSIM to final (right axis)")
        ax2.legend(fontsize=7, loc="lower right")
        axes[1].plot(xs, self.feature_dist_to_final, "o-", label=f"feature distance ({self.feature_name})")
        axes[1].plot(xs, self.kl_cond_uncond, "s--", label="KL(cond || uncond)")
        axes[1].set_title("semantics and condition")
        for ai, a in enumerate(self.alphas):
            axes[2].plot(xs, [sum(u[ai] for u in s) / len(s) for s in self.rank_ratio_mean], label=f"alpha={a}")
        axes[2].set_title("energy rank / min(M, C)")
        for ax in axes:
            ax.axvline(start - 0.5, color="k", ls=":")
            ax.set_xticks(xs, [f"{h}x{w}" for _, h, w in self.schedule], rotation=60, fontsize=7)
            ax.legend(fontsize=7)
        fig.suptitle("stagevar calibration: refinement stage from the dotted line")
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def calibrate(model, conditions: Sequence, *, seeds: Sequence[int] = (0,), alphas: Sequence[float] = ALPHAS,
              feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, feature_name: Optional[str] = None,
              unit_blocks: Optional[int] = None, one_branch_sweep: bool = True, batch_size: int = 8,
              encode: Optional[Callable] = None, **generation_kwargs) -> Calibration:
    """Measure stages and ranks of ``model`` from intact generations on ``conditions``.

    Args:
        model: a supported model (VAR or Infinity interface); it is left as it was.
        conditions: class labels (VAR) or prompts (Infinity, with ``encode``), one image per
            condition and seed.
        seeds: ``g_seed`` values; each condition is generated once per seed.
        alphas: energy levels for the rank table.
        feature_fn: ``(B, 3, H, W)`` in [0, 1] -> ``(B, F)`` features (e.g. a CLIP image
            encoder); default :func:`lowfreq_features`.
        unit_blocks: blocks per low-rank unit (default: the family's).
        one_branch_sweep: also generate with one branch from each scale on (K - 1 more
            generations per batch) to measure the change in the final image.
        batch_size: conditions per generation call.
        encode: prompts -> the model's text condition (Infinity: the packed tuple, e.g.
            ``bundle.encode``).
        **generation_kwargs: the rest of the generation call (VAR: ``cfg``, ``top_k``, ...;
            Infinity: ``vae``, ``scale_schedule``, ``cfg_list``, ``tau_list``, ...). Guidance
            must be on: the condition sensitivity compares the two CFG branches.

    Cost: one intact generation per (condition, seed) with a decode per scale and a Gram
    eigen-decomposition per unit per scale per row, plus ``K - 1`` generations per batch for the
    sweep.
    """
    where = "stagevar.calibrate"
    conditions = _args.items(where, "conditions", conditions, "class labels or prompts to generate")
    seeds = _args.seeds(where, "seeds", seeds)
    alphas = _args.items(where, "alphas", alphas, "energy levels in (0, 1)")
    for i, a in enumerate(alphas):
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not 0 < a < 1:
            raise ValueError(f"{where}: alphas[{i}]={a!r} must be a number in (0, 1)")
    _args.function(where, "feature_fn", feature_fn, "a function of (B, 3, H, W) images in [0, 1] to (B, F) features")
    _args.text(where, "feature_name", feature_name)
    unit_blocks = _args.optional_whole(where, "unit_blocks", unit_blocks)
    _args.flag(where, "one_branch_sweep", one_branch_sweep)
    batch_size = _args.whole(where, "batch_size", batch_size)
    _args.function(where, "encode", encode, "a function of prompts to the model's text condition")
    reserved = sorted({"B", "label_B", "label_B_or_BLT", "g_seed"} & set(generation_kwargs))
    if reserved:
        raise ValueError(f"pass conditions and seeds to calibrate, not {' / '.join(reserved)}")
    from .. import api
    kept = api.detach(model)  # its config, executor, graphs and last report, attached again at the end
    try:
        adapter = adapter_for(model)
        engine = Engine(adapter, preset("none").replace(unit_blocks=unit_blocks))
        feat = feature_fn or lowfreq_features
        fname = feature_name or ("lowfreq-8x8" if feature_fn is None else getattr(feature_fn, "__name__", "custom"))
        per: Dict[str, List[List[float]]] = {}
        ranks: Dict[int, Dict[int, List[List[float]]]] = {}
        schedule = None
        for seed in seeds:
            for i in range(0, len(conditions), batch_size):
                kw = dict(generation_kwargs, g_seed=seed, **adapter.condition_kwargs(conditions[i:i + batch_size], encode))
                obs = _Observer(adapter, list(alphas))
                engine.observe(obs, **kw)
                width = obs.width
                schedule = obs.schedule
                K = len(schedule)
                if not per:
                    per = {k: [[] for _ in range(K)] for k in ("psnr", "ssim", "feat", "kl", "ob")}
                final = obs.partial[K - 1]
                f_final = feat(final)
                for si in range(K):
                    img = obs.partial[si]
                    per["psnr"][si] += psnr(img, final).tolist()
                    per["ssim"][si] += ssim(img, final).tolist()
                    per["feat"][si] += feature_distance(feat(img), f_final).tolist()
                    per["kl"][si].append(obs.kl[si])
                    for u, rows in obs.ranks.get(si, {}).items():
                        ranks.setdefault(si, {}).setdefault(u, []).extend(rows)
                if one_branch_sweep:
                    for k in range(1, K):
                        sweep = Engine(adapter, StageVARConfig(refine_start=k, branch="uncond", unit_blocks=unit_blocks,
                                                               cache_condition=False, name=f"sweep{k}"))
                        last = _FinalImage(adapter)
                        sweep.observe(last, **kw)
                        per["ob"][k] += psnr(last.image, final).tolist()
        mean = lambda v: float(sum(v) / len(v)) if v else float("nan")  # noqa: E731
        K = len(schedule)
        r_mean, r_std = [], []
        for si in range(K):
            ms, ss = [], []
            for u in range(len(engine.units)):
                rows = torch.tensor(ranks[si][u], dtype=torch.float64)
                ms.append(rows.mean(0).tolist())
                ss.append((rows.std(0, unbiased=False) if len(rows) > 1 else torch.zeros(len(alphas))).tolist())
            r_mean.append(ms)
            r_std.append(ss)
        return Calibration(
            family=adapter.family, schedule=[[1, h, w] for h, w in schedule],
            unit_blocks=unit_blocks or adapter.default_unit_blocks,
            num_conditions=len(conditions) * len(seeds), alphas=[float(a) for a in alphas], feature_name=fname,
            psnr_to_final=[mean(v) for v in per["psnr"]], ssim_to_final=[mean(v) for v in per["ssim"]],
            feature_dist_to_final=[mean(v) for v in per["feat"]], kl_cond_uncond=[mean(v) for v in per["kl"]],
            one_branch_psnr=[None] + [mean(v) for v in per["ob"][1:]] if one_branch_sweep else None,
            rank_ratio_mean=r_mean, rank_ratio_std=r_std, width=width,
            generation_kwargs={k: v for k, v in generation_kwargs.items() if isinstance(v, (int, float, bool, str))},
        )
    finally:
        if kept is not None:
            api.attach(model, kept)


def write_into_source(write_into: Optional[str], checkpoint: Optional[str]) -> Optional[str]:
    """The checkpoint file whose tensors and metadata ``--write-into`` writes with the recommended
    config: ``checkpoint`` (the file the calibrated model was loaded from), else the bundled model;
    None without ``write_into``. An existing ``write_into`` must hold the same tensors: only its
    config changes. Checked before any work.

    Raises:
        ValueError: ``write_into`` is a folder, the installed bundled checkpoint, or a file with
            other weights (it is not overwritten).
    """
    if not write_into:
        return None
    from ..models.pretrained import BUNDLED, same_tensors

    bundled = BUNDLED["stagevar-tiny-var"]
    source = checkpoint or bundled
    if os.path.isdir(write_into):
        raise ValueError(f"--write-into {write_into} is a folder; give the checkpoint file's path (.safetensors)")
    if os.path.exists(write_into) and os.path.exists(bundled) and os.path.samefile(write_into, bundled):
        raise ValueError(f"--write-into {write_into} is the bundled checkpoint installed with stagevar: writing it "
                         f"would change what every run of this installation loads; give a new path")
    if os.path.exists(write_into) and not same_tensors(source, write_into):
        raise ValueError(f"--write-into {write_into} exists and holds other weights than the calibrated model "
                         f"({source}); it is left as it is. Give a new path, or a copy of that checkpoint")
    return source
