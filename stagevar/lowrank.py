"""Low-rank operations of StageVAR as pure tensor functions.

A unit of blocks runs on ``r`` tokens instead of the scale's ``M``:

1. ``idx_Br = representative_indices(x_BMC, r, gen)`` -- positions sampled without
   replacement with probability proportional to ``||x_i||^2``;
2. ``x_BrC = project(x_BMC, r, kind, idx_Br, gen)`` -- random projection ``Q^T x`` (Gaussian
   or orthogonal ``Q``) or the representative tokens themselves (``"sample"``);
3. the unit runs on ``x_BrC``;
4. ``out_BMC = restore_tokens(prev_BMC, prev_hw, out_BrC, idx_Br, (h, w))`` -- the same unit's output
   at the previous scale, area-interpolated to ``h x w``, with row ``j`` of the unit's ``r`` outputs
   written to position ``idx_Br[:, j]``.

A :class:`Reducer` bundles steps 1, 2 and 4 as one registered technique (the paper's Gaussian
projection, its orthogonal variant, the representatives themselves, FastVAR's pruning); the
config names one (``StageVARConfig.reducer``) and the engine looks it up once.

Nothing here knows a model. Randomness comes only from the generator passed in.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["representative_indices", "farthest_from_mean_indices", "projection_matrix", "project", "restore_tokens",
           "area_resize_tokens", "Reducer", "REDUCERS", "register_reducer", "reducer"]


def representative_indices(x_BMC: torch.Tensor, r: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Sample ``r`` of ``M`` positions per row, without replacement, with ``p_i ∝ ||x_i||^2``.

    Args:
        x_BMC: ``(B, M, C)`` tokens.
        r: positions to keep, ``1 <= r <= M``.
        generator: source of randomness (on ``x_BMC.device``).

    Returns:
        ``(B, r)`` int64 indices, distinct within each row.
    """
    B, M, _ = x_BMC.shape
    if not 1 <= r <= M:
        raise ValueError(f"rank r={r} must be in [1, M={M}]")
    w_BM = x_BMC.float().pow(2).sum(-1)
    # A tiny floor keeps multinomial valid when some (or all) tokens are exactly zero.
    w_BM = w_BM + w_BM.amax(dim=-1, keepdim=True).clamp_min(1e-30) * 1e-12
    return torch.multinomial(w_BM, r, replacement=False, generator=generator)


def farthest_from_mean_indices(x_BMC: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` positions per row farthest from the row's token mean (``||x_i - mean||^2``), ``(B, r)``."""
    B, M, _ = x_BMC.shape
    if not 1 <= r <= M:
        raise ValueError(f"rank r={r} must be in [1, M={M}]")
    x = x_BMC.float()
    d_BM = (x - x.mean(1, keepdim=True)).pow(2).sum(-1)
    return d_BM.topk(r, dim=1, sorted=False).indices


def projection_matrix(M: int, r: int, kind: str, generator: Optional[torch.Generator],
                      device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A projection ``Q`` of shape ``(M, r)``.

    ``"gaussian"``: i.i.d. ``N(0, 1/r)`` entries (the paper's random projection, not
    orthogonalised). ``"orthogonal"``: the Gaussian draw with orthonormal columns (QR).
    """
    Q_Mr = torch.randn(M, r, generator=generator, device=device, dtype=torch.float32)
    if kind == "gaussian":
        Q_Mr = Q_Mr / (r ** 0.5)
    elif kind == "orthogonal":
        Q_Mr, R = torch.linalg.qr(Q_Mr)
        Q_Mr = Q_Mr * torch.sign(torch.diagonal(R)).unsqueeze(0)  # unique, sign-fixed factor
    else:
        raise ValueError(f"unknown projection kind {kind!r}; expected 'gaussian' or 'orthogonal'")
    return Q_Mr.to(dtype)


def project(x_BMC: torch.Tensor, r: int, kind: str, idx_Br: torch.Tensor,
            generator: Optional[torch.Generator]) -> torch.Tensor:
    """Reduce ``M`` tokens to ``r``.

    Args:
        x_BMC: ``(B, M, C)`` unit input.
        r: tokens to produce.
        kind: ``"gaussian"`` / ``"orthogonal"`` (``Q^T x`` with one ``Q`` of shape ``(M, r)``
            shared by all rows, computed in fp32) or ``"sample"`` (``x[:, idx_Br]``).
        idx_Br: ``(B, r)`` representative positions (used by ``"sample"``).
        generator: draws ``Q``.

    Returns:
        ``(B, r, C)`` in ``x_BMC``'s dtype.
    """
    if kind == "sample":
        return torch.gather(x_BMC, 1, idx_Br.unsqueeze(-1).expand(-1, -1, x_BMC.shape[-1]))
    Q_Mr = projection_matrix(x_BMC.shape[1], r, kind, generator, x_BMC.device)
    with torch.autocast(x_BMC.device.type, enabled=False):  # fp32 even inside the caller's autocast
        return torch.matmul(Q_Mr.t(), x_BMC.float()).to(x_BMC.dtype)


def area_resize_tokens(x_BMC: torch.Tensor, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> torch.Tensor:
    """Area-interpolate row-major token maps ``(B, h*w, C)`` from ``src_hw`` to ``dst_hw``, in fp32.

    Equal to ``F.interpolate(map, size=dst_hw, mode="area")`` on the ``(B, C, h, w)`` map. The token
    layout is that map in channels-last memory order, so this is one pooling kernel on a view, with
    no transposing copies (few operators: on a GPU this loop is bound by the host issuing them).
    """
    B, M, C = x_BMC.shape
    (h, w), (H, W) = src_hw, dst_hw
    if M != h * w:
        raise ValueError(f"{M} tokens do not form a {h}x{w} map")
    x_BChw = x_BMC.float().view(B, h, w, C).permute(0, 3, 1, 2)  # channels-last strides
    out_BCHW = F.adaptive_avg_pool2d(x_BChw, (H, W))
    return out_BCHW.permute(0, 2, 3, 1).reshape(B, H * W, C)


def restore_tokens(prev_BMC: torch.Tensor, prev_hw: Tuple[int, int], out_BrC: torch.Tensor, idx_Br: torch.Tensor,
            hw: Tuple[int, int]) -> torch.Tensor:
    """Representative token restoration.

    Args:
        prev_BMC: ``(B, h'*w', C)`` the unit's output at the previous scale (row-major tokens).
        prev_hw: ``(h', w')``.
        out_BrC: ``(B, r, C)`` the unit's output on the reduced tokens.
        idx_Br: ``(B, r)`` positions (row-major in ``h x w``) that receive ``out_BrC``.
        hw: the current ``(h, w)``.

    Returns:
        ``(B, h*w, C)``: the area-interpolated previous output with ``out_BrC[:, j]`` written at
        ``idx_Br[:, j]``.
    """
    base_BMC = area_resize_tokens(prev_BMC, prev_hw, hw).to(out_BrC.dtype)
    return base_BMC.scatter(1, idx_Br.unsqueeze(-1).expand(-1, -1, out_BrC.shape[-1]), out_BrC)


# ------------------------------------------------------------------------------------ reducers
class Reducer:
    """How a low-rank unit computes on fewer tokens: one registered object per technique.

    A reducer is chosen once, from the config's ``reducer`` name (:func:`reducer`); for each
    reduced unit the engine calls :meth:`select`, :meth:`reduce`, runs the unit's blocks on the
    ``r`` reduced tokens (telling them the positions), and calls :meth:`expand`. Subclass it, set
    ``name`` and register it with :func:`register_reducer` to add a technique.

    Attributes:
        name: what ``StageVARConfig.reducer`` names.
        exact_at_full_rank: at ``r = M`` the reduced unit reproduces the intact one up to float
            rounding (the tokens themselves are run, only reordered).
        graphable: its ops can be captured in a CUDA graph.
    """

    name: str = ""
    exact_at_full_rank: bool = False
    graphable: bool = True

    def select(self, x_BMC: torch.Tensor, r: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``(B, r)`` positions that receive the unit's reduced outputs."""
        return representative_indices(x_BMC, r, generator)

    def reduce(self, x_BMC: torch.Tensor, idx_Br: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """``(B, r, C)`` tokens the unit runs on."""
        raise NotImplementedError

    def expand(self, out_BrC: torch.Tensor, idx_Br: torch.Tensor, prev_BMC: torch.Tensor, prev_hw: Tuple[int, int],
               hw: Tuple[int, int]) -> torch.Tensor:
        """``(B, h*w, C)`` unit output from the reduced outputs and the unit's output at the previous scale."""
        return restore_tokens(prev_BMC, prev_hw, out_BrC, idx_Br, hw)


class GaussianProjection(Reducer):
    """The paper's random projection ``Q^T x`` (i.i.d. Gaussian ``Q``), restored at representatives
    sampled with ``p_i ∝ ||x_i||^2`` over the previous scale's output."""

    name = "gaussian"

    def reduce(self, x_BMC, idx_Br, generator):
        return project(x_BMC, idx_Br.shape[1], self.name, idx_Br, generator)


class OrthogonalProjection(GaussianProjection):
    """The Gaussian draw with orthonormal columns (QR, which a CUDA graph cannot capture)."""

    name = "orthogonal"
    graphable = False


class Representatives(Reducer):
    """The representative tokens themselves (sampled with ``p_i ∝ ||x_i||^2``), restored likewise."""

    name = "sample"
    exact_at_full_rank = True

    def reduce(self, x_BMC, idx_Br, generator):
        return project(x_BMC, idx_Br.shape[1], "sample", idx_Br, generator)


class FarthestFromMean(Representatives):
    """FastVAR's cached token pruning: keep the ``r`` tokens farthest from the token-map mean
    (deterministic) and fill the pruned positions from the unit's previous-scale output, upsampled."""

    name = "fastvar"

    def select(self, x_BMC, r, generator):
        return farthest_from_mean_indices(x_BMC, r)


REDUCERS: Dict[str, Reducer] = {}


def register_reducer(cls: type) -> type:
    """Make ``StageVARConfig(reducer=cls.name)`` run ``cls`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Reducer)) or not cls.name:
        raise TypeError(f"register_reducer expects a Reducer subclass with a name, got {cls!r}")
    REDUCERS[cls.name] = cls()
    return cls


for _cls in (GaussianProjection, OrthogonalProjection, Representatives, FarthestFromMean):
    register_reducer(_cls)


def reducer(name: str) -> Reducer:
    """The registered reducer called ``name``."""
    try:
        return REDUCERS[name]
    except KeyError:
        raise ValueError(f"unknown reducer {name!r}; registered: {sorted(REDUCERS)}") from None
