"""Samplers an adapter falls back on when a model's module has none of its own, and the reference
models use (same call conventions as upstream VAR). Core: imports only torch."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                             rng: Optional[torch.Generator] = None, num_samples: int = 1) -> torch.Tensor:
    """Sample token ids from ``(B, l, V)`` logits after top-k / nucleus filtering (in place).

    Returns ``(B, l, num_samples)`` int64 ids. ``num_samples < 0`` samples without replacement.
    """
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth_BlV = logits_BlV.topk(min(top_k, V), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth_BlV, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        drop = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop[..., -1:] = False  # always keep the most likely token
        logits_BlV.masked_fill_(drop.scatter(-1, sorted_idx, drop), -torch.inf)
    replacement = num_samples >= 0
    n = abs(num_samples)
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=n, replacement=replacement, generator=rng).view(B, l, n)


def gumbel_softmax_with_rng(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10,
                            dim: int = -1, rng: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gumbel-softmax whose noise comes from ``rng`` (``F.gumbel_softmax`` when ``rng`` is None)."""
    if rng is None:
        return F.gumbel_softmax(logits=logits, tau=tau, hard=hard, eps=eps, dim=dim)
    u = torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=rng)
    y = ((logits - u.log()) / tau).softmax(dim)
    if hard:
        index = y.max(dim, keepdim=True)[1]
        y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
        return y_hard - y.detach() + y
    return y
