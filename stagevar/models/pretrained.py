"""Saving and loading reference-model checkpoints (safetensors), locally or from the Hugging Face Hub.

A checkpoint is one ``.safetensors`` file holding the VAR transformer (keys ``var.*``) and its
VQVAE (keys ``vae.*``); its metadata records the ``reference_var`` configuration and the class
names, so ``load_pretrained`` rebuilds the same model without any other file.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch

FORMAT = "stagevar-var-v1"
_HERE = os.path.join(os.path.dirname(__file__), "weights")
BUNDLED = {"stagevar-tiny-var": os.path.join(_HERE, "stagevar-tiny-var.safetensors")}
# The independent crop classifier each bundled model's quality is measured with (stagevar.quality).
BUNDLED_CLASSIFIERS = {"stagevar-tiny-var": os.path.join(_HERE, "stagevar-tiny-var-classifier.safetensors")}
FILENAME = "model.safetensors"


def save_pretrained(var, path: str, class_names: Sequence[str], config: dict, dtype: Optional[torch.dtype] = None) -> None:
    """Write ``var`` (and its VQVAE) to ``path`` with its ``reference_var`` ``config`` and ``class_names``."""
    from safetensors.torch import save_file

    if len(class_names) != var.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {var.num_classes} classes")
    tensors = {}
    for prefix, module in (("var.", var), ("vae.", var.vae_proxy[0])):
        for k, v in module.state_dict().items():
            t = v.detach().cpu().contiguous()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            tensors[prefix + k] = t
    meta = {"format": FORMAT, "config": json.dumps(config), "class_names": json.dumps(list(class_names))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(tensors, path, metadata=meta)


def _resolve(name_or_path: str) -> str:
    if name_or_path in BUNDLED:
        path = BUNDLED[name_or_path]
        if not os.path.exists(path):
            raise FileNotFoundError(f"the bundled checkpoint {name_or_path!r} is not in this installation ({path}); "
                                    f"train it with examples/train_reference.py or pass a local path")
        return path
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name_or_path} has no {FILENAME}")
        return path
    if os.path.isfile(name_or_path):
        return name_or_path
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(repo_id=name_or_path, filename=FILENAME)
        except Exception as e:  # offline, unknown repo, missing file: all say the same to the user
            raise OSError(f"could not fetch {FILENAME} of Hugging Face Hub repo {name_or_path!r} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). If the Hub is not reachable "
                          f"from this machine, download the file elsewhere and pass its local path.") from None
    raise FileNotFoundError(f"{name_or_path!r} is neither a bundled checkpoint ({', '.join(BUNDLED)}), a local "
                            f"file or folder, nor a Hugging Face Hub repo id of the form 'owner/name'")


def load_pretrained(name_or_path: str = "stagevar-tiny-var", device: Optional[torch.device] = None):
    """Load a reference VAR checkpoint: a bundled name, a local file/folder, or a Hub repo id.

    Returns the VAR (eval mode, float32) with its VQVAE attached as upstream does
    (``vae_proxy[0]``) and ``class_names`` set.
    """
    from safetensors import safe_open

    from . import reference_var

    path = _resolve(name_or_path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a stagevar checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    var = reference_var("tiny", **config)
    vae = var.vae_proxy[0]
    for prefix, module in (("var.", var), ("vae.", vae)):
        sd = {k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(sd, strict=True)
    var.class_names = json.loads(meta["class_names"])
    var.eval()
    vae.eval()
    if device is not None:
        var.to(device)
        vae.to(device)
    return var
