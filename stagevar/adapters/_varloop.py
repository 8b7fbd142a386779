"""What the families built on VAR's loop share (VAR, STAR, HART): ``patch_nums`` square scales, blocks
with a self-attention KV cache at ``block.attn``, the model's own sampling helpers, and a
multi-scale VQ quantizer that accumulates ``f_hat`` and hands back the next scale's map.

A family subclasses :class:`VARLoopAdapter` and writes what differs: the condition (``begin``,
``row_fields``), how a block is called, the logits, and how the next input is embedded
(``_next_input``). Its call state has an ``f_hat`` field beside :class:`~.base.CallState`'s.
"""
from __future__ import annotations

import sys
from typing import Any, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import sampling as _own_helpers
from .base import Adapter


def sample_codes(st: Any, quant: Any, logits_BlV: torch.Tensor, ratio: float, top_k: int,
                 top_p: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """VAR's sampling step (HART's too): token ids drawn from the call's ``rng`` with the call's
    sampler, and their code vectors ``(B, l, Cvae)`` -- with ``more_smooth``, the gumbel-softmax
    mixture of the codebook instead (the ids drawn all the same, as upstream)."""
    idx_Bl = st.sample(logits_BlV, rng=st.rng, top_k=top_k, top_p=top_p, num_samples=1)
    if idx_Bl.dim() == 3:  # VAR's helper returns (B, l, 1)
        idx_Bl = idx_Bl[:, :, 0]
    if not st.more_smooth:
        return idx_Bl, quant.embedding(idx_Bl)
    gum_t = max(0.27 * (1 - ratio * 0.95), 0.005)
    soft = st.gumbel(logits_BlV.mul(1 + ratio), tau=gum_t, hard=False, dim=-1, rng=st.rng)
    return idx_Bl, soft @ quant.embedding.weight.unsqueeze(0)


class VARLoopAdapter(Adapter):
    """The shared half of the VAR-style adapters (not registered itself: it has no ``family``)."""

    default_unit_blocks = 1
    block_class = "AdaLNSelfAttn"  # upstream's block class, for the error on blocks without a KV cache

    def __init__(self, model: nn.Module):
        super().__init__(model)
        for i, b in enumerate(model.blocks):
            if not hasattr(b, "attn") or not hasattr(b.attn, "kv_caching"):
                raise TypeError(f"{self.family.upper()} block {i} has no attn.kv_caching(); stagevar needs upstream's "
                                f"{self.block_class} blocks")

    def helpers(self):
        """The model's own sampling helpers (imported into its module upstream), else ours; looked up
        per call, so a helper replaced on the module after ``accelerate`` is the one used."""
        module = sys.modules.get(type(self.model).__module__)
        return (getattr(module, "sample_with_top_k_top_p_", _own_helpers.sample_with_top_k_top_p_),
                getattr(module, "gumbel_softmax_with_rng", _own_helpers.gumbel_softmax_with_rng))

    def blocks(self) -> List[nn.Module]:
        return list(self.model.blocks)

    def final_tensors(self, st: Any) -> List[torch.Tensor]:
        return [st.f_hat]

    def graphed_modules(self) -> Tuple[nn.Module, ...]:
        # upstream keeps the VQVAE out of the module tree (a tuple); its quantizer runs in every scale
        quant = self.model.vae_quant_proxy[0]
        return (self.model, quant) if isinstance(quant, nn.Module) else (self.model,)

    def default_schedule(self) -> List[Tuple[int, int]]:
        return [(pn, pn) for pn in self.model.patch_nums]

    def schedule(self, st: Any) -> List[Tuple[int, int]]:
        return self.default_schedule()

    def _offset(self, si: int) -> int:
        """Tokens before scale ``si`` in the concatenated sequence."""
        return sum(pn * pn for pn in self.model.patch_nums[:si])

    def _next_input(self, st: Any, si: int, next_map: torch.Tensor) -> None:
        raise NotImplementedError

    def _add_codes(self, st: Any, si: int, h_BlC: torch.Tensor) -> None:
        """Scale ``si``'s code vectors ``(B, l, Cvae)`` into ``f_hat``; the next scale's input from the
        quantizer's next map."""
        m = self.model
        pn = m.patch_nums[si]
        h_BChw = h_BlC.transpose_(1, 2).reshape(st.B, m.Cvae, pn, pn)
        st.f_hat, next_map = m.vae_quant_proxy[0].get_next_autoregressive_input(si, len(m.patch_nums), st.f_hat,
                                                                                 h_BChw)
        self._next_input(st, si, next_map)

    def skip_scale(self, st: Any, si: int) -> None:
        m = self.model
        if si < len(m.patch_nums) - 1:
            nxt = m.patch_nums[si + 1]
            self._next_input(st, si, F.interpolate(st.f_hat, size=(nxt, nxt), mode="area"))

    def decoder(self, call_kwargs: dict):
        return self.model.vae_proxy[0], "fhat_to_img"

    def images_of(self, output: torch.Tensor) -> torch.Tensor:
        return output.float()
