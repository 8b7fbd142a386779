"""Reference models written from scratch with upstream attribute names."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .var import VAR
from .vqvae import VQVAE

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
    if shape not in VAR_SHAPES:
        raise ValueError(f"unknown VAR shape {shape!r}; choose one of {sorted(VAR_SHAPES)}")
    cfg = {**_VAR_DEFAULTS, **VAR_SHAPES[shape]}
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown reference_var override(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    if cfg["kv_layout"] not in ("BHLc", "BLHc"):
        raise ValueError(f"kv_layout must be 'BHLc' (SDPA) or 'BLHc' (flash/xformers), got {cfg['kv_layout']!r}")
    patch_nums = tuple(cfg["patch_nums"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        vae = VQVAE(vocab_size=cfg["vocab_size"], z_channels=cfg["z_channels"], ch=cfg["ch"], num_down=cfg["num_down"],
                    v_patch_nums=patch_nums)
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


__all__ = ["VAR", "VQVAE", "reference_var", "VAR_SHAPES"]
