"""Kept for imports written before the samplers moved to :mod:`stagevar.sampling`."""
from ..sampling import gumbel_softmax_with_rng, sample_with_top_k_top_p_

__all__ = ["sample_with_top_k_top_p_", "gumbel_softmax_with_rng"]
