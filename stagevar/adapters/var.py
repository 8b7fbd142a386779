"""FoundationVision VAR (``models/var.py``, class ``VAR``), duck-typed on its attribute names.

Follows the loop of ``VAR.autoregressive_infer_cfg`` in github.com/FoundationVision/VAR (main
branch; the method is unchanged since the 2024 release): class-label condition with the null
class for CFG, CFG weight ramping with the scale index, the model's own ``rng`` and sampling
helpers, upstream's KV-cache layouts (SDPA and flash/xformers). Refuses blocks without
``attn.kv_caching`` and call arguments it does not implement.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn

from ._varloop import VARLoopAdapter, sample_codes
from .base import CallState, MemoizedCondition


@dataclass
class _VARCall(CallState):
    cfg: float
    top_k: int
    top_p: float
    more_smooth: bool
    cond_BD: torch.Tensor          # (rows, D) class embedding; rows = 2B until one branch is kept
    cond_BD_or_gss: torch.Tensor   # what the blocks take: cond_BD or shared_ada_lin(cond_BD)
    lvl_pos: torch.Tensor          # (1, L, C) level + absolute position embedding
    f_hat: torch.Tensor            # (B, Cvae, H, W) accumulated latent
    sample: Any = None             # the sampling helpers of this call
    gumbel: Any = None


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {tuple(value.shape)} {value.dtype} tensor"
    return f"{value!r}"[:60] + f" (a {type(value).__name__})"


class VARAdapter(VARLoopAdapter):
    family = "var"
    required = ("patch_nums", "blocks", "class_emb", "num_classes", "pos_start", "pos_1LC", "lvl_embed", "lvl_1L",
                "word_embed", "shared_ada_lin", "get_logits", "vae_quant_proxy", "vae_proxy", "Cvae", "first_l",
                "autoregressive_infer_cfg")
    consumed = frozenset({"B", "label_B", "g_seed", "cfg", "top_k", "top_p", "more_smooth"})
    row_fields = ("cond_BD", "cond_BD_or_gss")

    @property
    def default_preset(self) -> str:  # type: ignore[override]
        return self.preset_for_depth(len(self.model.blocks))

    @staticmethod
    def preset_for_depth(depth: int) -> str:
        """The family preset of a VAR of ``depth`` blocks: upstream's depths have their own."""
        return f"var-d{depth}" if depth in (16, 20, 24, 30, 36) else "var-d16"

    def device(self) -> torch.device:
        return self.model.lvl_1L.device

    def condition_kwargs(self, conditions, encode=None) -> dict:
        try:
            labels = [int(c) for c in conditions]
        except (TypeError, ValueError):
            raise ValueError(f"VAR conditions are class labels (ints), got {list(conditions)[:3]}...") from None
        bad = [c for c in labels if not 0 <= c < self.model.num_classes]
        if bad:
            raise ValueError(f"class labels {bad} are outside 0..{self.model.num_classes - 1}")
        return dict(B=len(labels), label_B=torch.tensor(labels, device=self.device()))

    # ------------------------------------------------------------------------------------------
    def begin(self, args: tuple, kwargs: dict, cache_condition: bool = False) -> _VARCall:
        m = self.model
        a = self.bind_call(args, kwargs)
        B, label_B = int(a["B"]), a["label_B"]
        rng = self.seeded_generator(a.get("g_seed"))
        device = self.device()
        if label_B is None:
            label_B = torch.multinomial(m.uniform_prob, num_samples=B, replacement=True, generator=rng).reshape(B)
        elif isinstance(label_B, numbers.Integral) and not isinstance(label_B, bool):  # one class for all (numpy's too)
            label_B = torch.full((B,), fill_value=m.num_classes if label_B < 0 else int(label_B), device=device)
        elif not (isinstance(label_B, torch.Tensor) and label_B.ndim == 1 and not label_B.is_floating_point()
                  and not label_B.is_complex() and label_B.dtype != torch.bool):
            raise ValueError(f"label_B must be a 1-D integer tensor of B class indices, one int for every image, or "
                             f"None (random classes); got {_what(label_B)}. For a list: torch.tensor(labels)")
        if label_B.shape[0] != B:
            raise ValueError(f"label_B has {label_B.shape[0]} labels but B={B}")
        sos = cond_BD = m.class_emb(torch.cat((label_B, torch.full_like(label_B, fill_value=m.num_classes)), dim=0))
        lvl_pos = m.lvl_embed(m.lvl_1L) + m.pos_1LC
        first = (sos.unsqueeze(1).expand(2 * B, m.first_l, -1) + m.pos_start.expand(2 * B, m.first_l, -1)
                 + lvl_pos[:, :m.first_l])
        f_hat = sos.new_zeros(B, m.Cvae, m.patch_nums[-1], m.patch_nums[-1])
        sample, gumbel = self.helpers()
        st = _VARCall(sample=sample, gumbel=gumbel, B=B, cfg=a.get("cfg", 1.5), top_k=a.get("top_k", 0), top_p=a.get("top_p", 0.0),
                      more_smooth=bool(a.get("more_smooth", False)), g_seed=a.get("g_seed"), rng=rng,
                      cond_BD=cond_BD, cond_BD_or_gss=cond_BD, lvl_pos=lvl_pos, next_x=first, f_hat=f_hat)
        for b in m.blocks:
            b.attn.kv_caching(True)
            if cache_condition and isinstance(getattr(b, "ada_lin", None), nn.Module) and not getattr(b, "shared_aln", False):
                b.ada_lin = MemoizedCondition(b.ada_lin)
        st.cond_BD_or_gss = m.shared_ada_lin(cond_BD)
        return st

    def run_block(self, st: _VARCall, block: nn.Module, x: torch.Tensor, si: int,
                  positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        # VAR's positions are absolute embeddings already added to x: nothing to do with `positions`.
        return block(x=x, cond_BD=st.cond_BD_or_gss, attn_bias=None)

    def _next_input(self, st: _VARCall, si: int, next_map: torch.Tensor) -> None:
        m = self.model
        if si == len(m.patch_nums) - 1:
            return
        x = next_map.view(st.B, m.Cvae, -1).transpose(1, 2)
        begin = self._offset(si + 1)
        x = m.word_embed(x) + st.lvl_pos[:, begin:begin + m.patch_nums[si + 1] ** 2]
        st.next_x = x.repeat(2, 1, 1) if st.branch == "both" else x

    def predict(self, st: _VARCall, si: int, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        K = len(m.patch_nums)
        ratio = si / (K - 1) if K > 1 else 0.0
        logits_BlV = m.get_logits(x, st.cond_BD)
        if st.branch == "both":
            t = st.cfg * ratio
            logits_BlV = (1 + t) * logits_BlV[:st.B] - t * logits_BlV[st.B:]
        # one branch: the kept rows' own logits (uncond: CFG weight 0, as in the paper)
        idx_Bl, h_BChw = sample_codes(st, m.vae_quant_proxy[0], logits_BlV, ratio, st.top_k, st.top_p)
        self._add_codes(st, si, h_BChw)
        return idx_Bl

    def decode_partial(self, st: _VARCall) -> torch.Tensor:
        return self.model.vae_proxy[0].fhat_to_img(st.f_hat.clone()).add_(1).mul_(0.5)

    def branch_logits(self, st: _VARCall, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.get_logits(x, st.cond_BD)
        return logits[:st.B], logits[st.B:]

    def finish(self, st: _VARCall) -> torch.Tensor:
        return self.model.vae_proxy[0].fhat_to_img(st.f_hat).add_(1).mul_(0.5)

    def end(self, st: Any) -> None:
        super().end(st)
        for b in self.model.blocks:
            if isinstance(getattr(b, "ada_lin", None), MemoizedCondition):
                b.ada_lin = b.ada_lin.inner
