"""Train the small reference VAR on crops of scikit-image's bundled photographs (CPU, seeded).

    python examples/train_reference.py                       # ~40 min on 2 CPU cores
    python examples/train_reference.py --vae-minutes 1 --var-minutes 2 --out /tmp/quick.safetensors

One class per source photograph (the scikit-image function name is the class name). Images are
random crops (35-90% of the shorter side) with horizontal flips, resized to 48x48. The VQVAE
downsamples 4x to a 12x12 latent quantized over 9 scales (1, 2, 3, 4, 5, 6, 8, 10, 12) with one
shared 512-entry codebook (encoder/decoder width 32); the class-conditional VAR (width 192, depth 6) is trained with
teacher forcing and 10% label dropout (for classifier-free guidance). Both phases run for a time
budget; losses go to --log as JSON. Needs scikit-image (pip install scikit-image).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
           "colorwheel", "camera", "coins", "brick", "logo"]
SIDE = 48
MODEL = dict(depth=6, embed_dim=192, num_heads=6, patch_nums=[1, 2, 3, 4, 5, 6, 8, 10, 12], vocab_size=512,
             z_channels=16, ch=32, num_down=2, num_classes=len(CLASSES), gate=0.0, seed=0)


def load_photos():
    import skimage.data as data

    photos = []
    for name in CLASSES:
        im = np.asarray(getattr(data, name)())
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        im = im[..., :3].astype(np.float32)
        photos.append(torch.from_numpy(im / (255.0 if im.max() > 1 else 1.0)).permute(2, 0, 1))
    return photos


def make_crops(photos, per_class: int, g: torch.Generator):
    """``(N, 3, SIDE, SIDE)`` in [-1, 1] and labels: random crops and flips of each photograph."""
    xs, ys = [], []
    for label, im in enumerate(photos):
        _, H, W = im.shape
        for _ in range(per_class):
            frac = 0.35 + 0.55 * torch.rand(1, generator=g).item()
            s = max(8, int(frac * min(H, W)))
            top = torch.randint(0, H - s + 1, (1,), generator=g).item()
            left = torch.randint(0, W - s + 1, (1,), generator=g).item()
            crop = im[:, top:top + s, left:left + s].unsqueeze(0)
            crop = F.interpolate(crop, size=(SIDE, SIDE), mode="area")
            if torch.rand(1, generator=g).item() < 0.5:
                crop = crop.flip(-1)
            xs.append(crop[0] * 2 - 1)
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def train_vae(vae, x, minutes: float, g: torch.Generator, log: list, batch: int = 32):
    opt = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0, betas=(0.9, 0.95))
    quant = vae.quantize
    usage = torch.zeros(quant.vocab_size)
    t0, step = time.time(), 0
    vae.train()
    while time.time() - t0 < minutes * 60:
        idx = torch.randint(0, len(x), (batch,), generator=g)
        img = x[idx]
        rec, vq_loss = vae(img)
        rec_loss = F.mse_loss(rec, img)
        loss = rec_loss + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # revive codes no scale used recently from current encoder outputs
            f = vae.img_to_f(img)
            for ids in quant.f_to_idxBl_or_fhat(f, to_fhat=False):
                usage.index_add_(0, ids.flatten(), torch.ones(ids.numel()))
            if step % 50 == 49:
                dead = (usage == 0).nonzero().flatten()
                if len(dead):
                    z = F.interpolate(f, size=(4, 4), mode="area").permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                    pick = torch.randint(0, len(z), (len(dead),), generator=g)
                    quant.embedding.weight.data[dead] = z[pick] + 0.01 * torch.randn(len(dead), z.shape[1], generator=g)
                usage.zero_()
        if step % 50 == 0:
            log.append(dict(phase="vqvae", step=step, seconds=round(time.time() - t0, 1), rec_mse=rec_loss.item(),
                            vq=vq_loss.item()))
            print(f"vqvae step {step} rec_mse {rec_loss.item():.4f} vq {vq_loss.item():.4f}", flush=True)
        step += 1
    vae.eval()


def train_var(var, ids_all, labels, minutes: float, g: torch.Generator, log: list, batch: int = 32, lr: float = 1e-3):
    quant = var.vae_quant_proxy[0]
    opt = torch.optim.AdamW(var.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    t0, step = time.time(), 0
    budget = minutes * 60
    var.train()
    while time.time() - t0 < budget:
        frac = (time.time() - t0) / budget
        for group in opt.param_groups:  # short warm-up, then cosine
            group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(0, len(labels), (batch,), generator=g)
        gt = [t[idx] for t in ids_all]
        with torch.no_grad():
            x_in = quant.idxBl_to_var_input(gt)
        logits = var(labels[idx], x_in)
        loss = F.cross_entropy(logits.reshape(-1, var.V), torch.cat(gt, 1).reshape(-1), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                acc = (logits.argmax(-1) == torch.cat(gt, 1)).float().mean().item()
            log.append(dict(phase="var", step=step, seconds=round(time.time() - t0, 1), ce=loss.item(), token_acc=acc))
            print(f"var step {step} ce {loss.item():.3f} token_acc {acc:.3f}", flush=True)
        step += 1
    var.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="stagevar/models/weights/stagevar-tiny-var.safetensors")
    ap.add_argument("--log", default="benchmarks/train_reference_log.json")
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--vae-minutes", type=float, default=8)
    ap.add_argument("--var-minutes", type=float, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from stagevar.models import reference_var, save_pretrained

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    photos = load_photos()
    x, y = make_crops(photos, args.per_class, g)
    x_val, y_val = make_crops(photos, 20, torch.Generator().manual_seed(args.seed + 1))
    print(f"{len(x)} training crops of {len(CLASSES)} classes at {SIDE}x{SIDE}", flush=True)
    var = reference_var("tiny", **MODEL)
    var.init_weights(init_std=0.02, init_adaln_gamma=1e-5, gate=0.0)
    vae = var.vae_proxy[0]
    log: list = []
    train_vae(vae, x, args.vae_minutes, g, log)
    with torch.no_grad():
        rec = vae.fhat_to_img(vae.quantize.f_to_idxBl_or_fhat(vae.img_to_f(x_val), to_fhat=True)[-1])
        val_mse = F.mse_loss(rec, x_val).item()
        ids_all = [torch.cat(parts) for parts in zip(*[vae.img_to_idxBl(x[i:i + 256]) for i in range(0, len(x), 256)])]
        used = len(torch.unique(torch.cat([t.flatten() for t in ids_all])))
    print(f"VQVAE held-out reconstruction MSE {val_mse:.4f} (images in [-1, 1]); codes used {used}/512", flush=True)
    for p in vae.parameters():
        p.requires_grad_(False)
    train_var(var, ids_all, y, args.var_minutes, g, log)
    summary = dict(classes=CLASSES, side=SIDE, model=MODEL, vae_val_mse=val_mse, codes_used=used, seed=args.seed,
                   train_crops=len(x), per_class=args.per_class)
    with open(args.log, "w") as f:
        json.dump(dict(summary=summary, log=log), f, indent=1)
    save_pretrained(var, args.out, CLASSES, MODEL, dtype=torch.float16)
    print(f"wrote {args.out} and {args.log}", flush=True)


if __name__ == "__main__":
    main()
