"""Reference models written from scratch with upstream attribute names."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch

from ._shapes import check_kv_layout, shape_config, vqvae_for
from .infinity import ASPECTS, BSQVAE, Infinity, TextEncoder, infinity_schedule
from .var import VAR
from .vqvae import VQVAE
from .star import STAR, STAR_SHAPES as _STAR_SHAPES, STARBundle, reference_star  # noqa: E402

# VAR shapes: upstream ties width to depth (C = 64 * depth, heads = depth). "tiny" and "small"
# are for tests and quick demos.
_P256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
_P512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
VAR_SHAPES: Dict[str, dict] = {
    "tiny": dict(depth=2, embed_dim=64, num_heads=4, patch_nums=(1, 2, 3, 4), vocab_size=64, z_channels=8,
                 ch=16, num_down=2, num_classes=10),
    "small": dict(depth=4, embed_dim=128, num_heads=4, patch_nums=(1, 2, 3, 4, 5, 6, 8), vocab_size=256,
                  z_channels=16, ch=32, num_down=3, num_classes=10),
    "d16": dict(depth=16, embed_dim=1024, num_heads=16, patch_nums=_P256),
    "d20": dict(depth=20, embed_dim=1280, num_heads=20, patch_nums=_P256),
    "d24": dict(depth=24, embed_dim=1536, num_heads=24, patch_nums=_P256),
    "d30": dict(depth=30, embed_dim=1920, num_heads=30, patch_nums=_P256),
    "d36": dict(depth=36, embed_dim=2304, num_heads=36, patch_nums=_P512),
}
_VAR_DEFAULTS = dict(vocab_size=4096, z_channels=32, ch=64, num_down=4, num_classes=1000, mlp_ratio=4.0,
                     attn_l2_norm=True, shared_aln=False, kv_layout="BHLc", gate=1.0, seed=0)


def reference_var(shape: str = "tiny", device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
                  **overrides) -> VAR:
    """Build a reference VAR (with its VQVAE) with random weights, in eval mode.

    Args:
        shape: one of :data:`VAR_SHAPES` (``"tiny"`` runs in milliseconds; ``"d16"``..``"d36"``
            match upstream's widths and depths).
        device, dtype: where to put it.
        **overrides: any shape field (``depth``, ``embed_dim``, ``num_heads``, ``patch_nums``,
            ``vocab_size``, ``z_channels``, ``ch``, ``num_down``, ``num_classes``, ``mlp_ratio``,
            ``attn_l2_norm``, ``shared_aln``, ``kv_layout`` ``"BHLc"``/``"BLHc"``), ``gate`` (the
            residual gate magnitude, ~1 for realistic random-weight behaviour) and ``seed``.
    """
    cfg = shape_config(VAR_SHAPES, _VAR_DEFAULTS, shape, overrides, "VAR")
    check_kv_layout(cfg["kv_layout"])
    patch_nums = tuple(cfg["patch_nums"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        vae = vqvae_for(cfg)
        var = VAR(vae, num_classes=cfg["num_classes"], depth=cfg["depth"], embed_dim=cfg["embed_dim"],
                  num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], shared_aln=cfg["shared_aln"],
                  attn_l2_norm=cfg["attn_l2_norm"], patch_nums=patch_nums, kv_layout=cfg["kv_layout"])
        var.init_weights(init_std=-1, gate=cfg["gate"])
    var.eval()
    vae.eval()
    if device is not None or dtype is not None:
        var.to(device=device, dtype=dtype)
        vae.to(device=device, dtype=dtype)
    return var


# Infinity shapes. "2b" has Infinity-2B's width and depth (C=2048, 32 blocks in 8 chunks);
# "2b-cpu" keeps the width with 8 blocks (one per chunk) for timing on a CPU.
INFINITY_SHAPES: Dict[str, dict] = {
    "tiny": dict(Ct5=32, depth=4, embed_dim=64, num_heads=4, num_block_chunks=2, codebook_dim=8, max_side=16,
                 vae_ch=16, vae_up=2),
    "small": dict(Ct5=64, depth=8, embed_dim=128, num_heads=4, num_block_chunks=4, codebook_dim=16, max_side=32,
                  vae_ch=16, vae_up=3),
    "2b": dict(Ct5=2048, depth=32, embed_dim=2048, num_heads=16, num_block_chunks=8, codebook_dim=32, max_side=64),
    "2b-cpu": dict(Ct5=2048, depth=8, embed_dim=2048, num_heads=16, num_block_chunks=8, codebook_dim=32, max_side=64),
    # Infinity-8B as published: patchified (a token is a 2x2 patch of 14-bit latents, 56 bits), a VAE
    # grid twice the token grid with 8x upsampling, C = 3584 in 40 blocks; "8b-cpu" keeps the width
    # and the layout with 4 blocks (one per chunk); "8b-tiny" is the layout at test size.
    "8b": dict(Ct5=2048, depth=40, embed_dim=3584, num_heads=28, num_block_chunks=8, codebook_dim=14, max_side=64,
               vae_up=3, apply_spatial_patchify=1),
    "8b-cpu": dict(Ct5=2048, depth=4, embed_dim=3584, num_heads=28, num_block_chunks=4, codebook_dim=14, max_side=64,
                   vae_up=3, apply_spatial_patchify=1),
    "8b-tiny": dict(Ct5=32, depth=4, embed_dim=64, num_heads=4, num_block_chunks=2, codebook_dim=6, max_side=16,
                    vae_ch=16, vae_up=1, apply_spatial_patchify=1),
}
_INF_DEFAULTS = dict(mlp_ratio=4.0, vae_ch=32, vae_up=4, gate=1.0, seed=0, add_lvl_embeding_only_first_block=1,
                     text_maxlen=64, apply_spatial_patchify=0, fused_norm=True)


class InfinityBundle:
    """A reference Infinity with its VAE and text encoder, called as upstream code calls them.

    ``bundle.model.autoregressive_infer_cfg(vae=bundle.vae, scale_schedule=bundle.schedule("16:9"),
    label_B_or_BLT=bundle.encode(prompts), B=len(prompts), cfg_list=[3.0] * K, tau_list=[1.0] * K, ...)``
    """

    def __init__(self, model: Infinity, vae: BSQVAE, text: TextEncoder, max_side: int):
        self.model, self.vae, self.text, self.max_side = model, vae, text, max_side

    def encode(self, prompts):
        """Prompts -> upstream's packed ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)``."""
        return self.text.encode(prompts, device=self.model.pos_start.device)

    def schedule(self, aspect: str = "1:1"):
        """The ``[(1, h, w), ...]`` schedule for ``aspect`` (``"width:height"``, see ``ASPECTS``)."""
        return infinity_schedule(aspect, self.max_side)

    def generate(self, prompts, aspect: str = "1:1", cfg: float = 3.0, tau: float = 1.0, g_seed=0, top_k=0, top_p=0.0,
                 negative_prompts=None, **kwargs):
        """Images ``(B, H, W, 3)`` uint8 BGR, as upstream's ``autoregressive_infer_cfg(..., ret_img=True)``."""
        if isinstance(prompts, str):
            prompts = [prompts]
        sched = self.schedule(aspect)
        neg = None if negative_prompts is None else self.encode(negative_prompts)
        _, _, img = self.model.autoregressive_infer_cfg(
            vae=self.vae, scale_schedule=sched, label_B_or_BLT=self.encode(prompts), B=len(prompts),
            negative_label_B_or_BLT=neg, g_seed=g_seed, cfg_list=[cfg] * len(sched), tau_list=[tau] * len(sched),
            top_k=top_k, top_p=top_p, ret_img=True, **kwargs)
        return img


def reference_infinity(shape: str = "tiny", device: Optional[torch.device] = None, **overrides) -> InfinityBundle:
    """Build a reference Infinity bundle (random weights, eval mode) with ``.model``, ``.vae``, ``.encode``.

    Args:
        shape: one of :data:`INFINITY_SHAPES`.
        **overrides: any shape field (``Ct5``, ``depth``, ``embed_dim``, ``num_heads``,
            ``num_block_chunks``, ``codebook_dim``, ``max_side``, ``vae_ch``, ``vae_up``, ``mlp_ratio``,
            ``add_lvl_embeding_only_first_block``, ``text_maxlen``, ``apply_spatial_patchify``,
            ``fused_norm`` -- False gives upstream's block without fused norms, whose self-attention
            ignores ``scale_ind``), ``gate`` and ``seed``.
    """
    cfg = shape_config(INFINITY_SHAPES, _INF_DEFAULTS, shape, overrides, "Infinity")
    schedules = [infinity_schedule(a, cfg["max_side"]) for a in ASPECTS]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = Infinity(Ct5=cfg["Ct5"], depth=cfg["depth"], embed_dim=cfg["embed_dim"], num_heads=cfg["num_heads"],
                         mlp_ratio=cfg["mlp_ratio"], codebook_dim=cfg["codebook_dim"],
                         num_block_chunks=cfg["num_block_chunks"], text_maxlen=cfg["text_maxlen"], schedules=schedules,
                         add_lvl_embeding_only_first_block=cfg["add_lvl_embeding_only_first_block"],
                         apply_spatial_patchify=cfg["apply_spatial_patchify"], fused_norm=cfg["fused_norm"])
        model.init_weights(gate=cfg["gate"], seed=cfg["seed"])
        vae = BSQVAE(codebook_dim=cfg["codebook_dim"], ch=cfg["vae_ch"], num_up=cfg["vae_up"])
    model.eval()
    vae.eval()
    if device is not None:
        model.to(device)
        vae.to(device)
    return InfinityBundle(model, vae, TextEncoder(cfg["Ct5"], seed=cfg["seed"]), cfg["max_side"])


from .pretrained import BUNDLED, load_pretrained, save_pretrained  # noqa: E402


# -- the registry of reference-model builders (the command line's --model choices) ---------------
@dataclass(frozen=True)
class ReferenceModel:
    """A built reference model and how to call it.

    ``call_kwargs``: the generation call's arguments other than the conditions, the seed and the
    sampling options (Infinity: the VAE, the schedule, per-scale CFG and temperature lists);
    ``encode``: prompts -> the model's text condition, or None for a class-conditional model.
    """

    description: str
    model: torch.nn.Module
    call_kwargs: dict
    encode: Optional[Callable] = None


@dataclass(frozen=True)
class ModelBuilder:
    """One entry of :data:`MODEL_BUILDERS`: ``build(shape, device, aspect, cfg)`` -> :class:`ReferenceModel`
    (``build(..., checkpoint=NAME_OR_PATH)`` for a builder that loads weights).

    ``shapes``: the shapes it accepts (empty: the model has one shape); ``aspects``: the aspect
    ratios it accepts (empty: fixed); ``checkpoints``: whether it loads trained weights, from a
    checkpoint of the user's choice too; ``tool_shapes``: per tool (``demo``, ``bench``,
    ``calibrate``, ``generate``) the shape it builds when none is given."""

    name: str
    summary: str
    shapes: Tuple[str, ...]
    aspects: Tuple[str, ...]
    build: Callable[..., ReferenceModel]
    available: Callable[[], bool] = lambda: True
    checkpoints: bool = False
    tool_shapes: Dict[str, str] = field(default_factory=dict)

    def shape_for(self, tool: str, shape: Optional[str]) -> Optional[str]:
        """``shape`` if given, else the one ``tool`` builds by default (None for a model of one shape)."""
        return (shape or self.tool_shapes[tool]) if self.shapes else None


def _build_pretrained(shape, device, aspect, cfg, checkpoint: Optional[str] = None) -> ReferenceModel:
    name = "stagevar-tiny-var" if checkpoint is None else checkpoint
    var = load_pretrained(name, device=device)
    return ReferenceModel(f"trained VAR {name!r}", var, dict(cfg=cfg))


def _build_var(shape, device, aspect, cfg) -> ReferenceModel:
    return ReferenceModel(f"reference VAR '{shape}' (random weights)", reference_var(shape, device=device), dict(cfg=cfg))


def _build_infinity(shape, device, aspect, cfg) -> ReferenceModel:
    bundle = reference_infinity(shape, device=device)
    sched = bundle.schedule(aspect)
    K = len(sched)
    kw = dict(vae=bundle.vae, scale_schedule=sched, cfg_list=[cfg] * K, tau_list=[1.0] * K, ret_img=True)
    return ReferenceModel(f"reference Infinity '{shape}' ({aspect}, {K} scales, random weights)", bundle.model, kw,
                          bundle.encode)


def _build_star(shape, device, aspect, cfg) -> ReferenceModel:
    bundle = reference_star(shape, device=device)
    K = len(bundle.model.patch_nums)
    return ReferenceModel(f"reference STAR '{shape}' ({K} scales, random weights)", bundle.model, dict(cfg=cfg),
                          bundle.encode)


MODEL_BUILDERS: Dict[str, ModelBuilder] = {
    "pretrained": ModelBuilder("pretrained", "the trained stagevar-tiny-var (bundled weights), or the "
                               "checkpoint --checkpoint names", (), (), _build_pretrained,
                               available=lambda: os.path.exists(BUNDLED["stagevar-tiny-var"]), checkpoints=True),
    "var": ModelBuilder("var", "a reference VAR with random weights", tuple(VAR_SHAPES), (), _build_var,
                        tool_shapes=dict(demo="d16", bench="tiny", calibrate="small", generate="d16")),
    "infinity": ModelBuilder("infinity", "a reference Infinity with random weights", tuple(INFINITY_SHAPES),
                             tuple(ASPECTS), _build_infinity,
                             tool_shapes=dict(demo="small", bench="tiny", calibrate="tiny", generate="small")),
    "star": ModelBuilder("star", "a reference STAR (text-to-image) with random weights", tuple(_STAR_SHAPES), (),
                         _build_star, tool_shapes=dict(demo="small", bench="tiny", calibrate="small", generate="small")),
}


def build_reference(name: str, shape: Optional[str] = None, device: Optional[torch.device] = None,
                    aspect: str = "1:1", cfg: float = 4.0, checkpoint: Optional[str] = None) -> ReferenceModel:
    """Build the registered reference model ``name`` (see :data:`MODEL_BUILDERS`) with guidance ``cfg``;
    ``checkpoint``: for ``pretrained``, what :func:`load_pretrained` loads instead of the bundled model.

    Raises:
        ValueError: an unknown name, a shape or aspect the model does not have (naming the choices), or
            a checkpoint for a model with random weights.
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_BUILDERS)}")
    b = MODEL_BUILDERS[name]
    if b.shapes and shape not in b.shapes:
        raise ValueError(f"shape {shape!r} is not a {name} shape; choose one of {sorted(b.shapes)}")
    if not b.shapes and shape is not None:
        raise ValueError(f"{name} has one shape; pass shape=None")
    if b.aspects and aspect not in b.aspects:
        raise ValueError(f"aspect {aspect!r} is not one of {sorted(b.aspects)}")
    if checkpoint is not None:
        if not b.checkpoints:
            with_ckpt = " or ".join(n for n, m in MODEL_BUILDERS.items() if m.checkpoints)
            raise ValueError(f"{name} has random weights and loads no checkpoint; a checkpoint goes with {with_ckpt}")
        return b.build(shape, device, aspect, cfg, checkpoint=checkpoint)
    return b.build(shape, device, aspect, cfg)


__all__ = ["load_pretrained", "save_pretrained", "VAR", "VQVAE", "reference_var", "VAR_SHAPES", "Infinity", "InfinityBundle", "reference_infinity",
           "INFINITY_SHAPES", "infinity_schedule", "ASPECTS", "ReferenceModel", "ModelBuilder", "MODEL_BUILDERS",
           "build_reference", "STAR", "STARBundle", "reference_star"]
