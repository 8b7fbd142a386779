"""Saving and loading reference-model checkpoints (safetensors), locally or from the Hugging Face Hub.

A checkpoint is one ``.safetensors`` file holding the VAR transformer (keys ``var.*``) and its
VQVAE (keys ``vae.*``); its metadata records the ``reference_var`` configuration and the class
names, so ``load_pretrained`` rebuilds the same model without any other file.

Loading reads the file's header first and checks the metadata against the tensors' names and
shapes before any module is built, so damaged or inconsistent metadata (``depth=10**6``) is
refused with an error naming the field instead of allocating a model the file cannot fill.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from .._files import atomic_path
from ._registry import ModelBuilder, ReferenceModel

FORMAT = "stagevar-var-v1"
CONFIG_KEY = "stagevar_config"  # metadata key of the calibrated StageVARConfig a checkpoint carries
_HERE = os.path.join(os.path.dirname(__file__), "weights")
BUNDLED = {"stagevar-tiny-var": os.path.join(_HERE, "stagevar-tiny-var.safetensors")}
# The independent crop classifiers each bundled model's quality is measured with (stagevar.quality):
# the texture judge sees the full image, the semantic judge only its block means (BENCHMARKS.md).
BUNDLED_CLASSIFIERS = {"stagevar-tiny-var": os.path.join(_HERE, "stagevar-tiny-var-classifier.safetensors")}
BUNDLED_SEMANTIC_CLASSIFIERS = {
    "stagevar-tiny-var": os.path.join(_HERE, "stagevar-tiny-var-semantic-classifier.safetensors")}
FILENAME = "model.safetensors"
_WRITERS = "stagevar's save_pretrained / examples/train_reference.py"
_REFETCH = "re-download it, or save it again with stagevar.models.save_pretrained"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def save_pretrained(var, path: str, class_names: Sequence[str], config: dict, dtype: Optional[torch.dtype] = None,
                    stagevar_config: Any = None) -> None:
    """Write ``var`` (and its VQVAE) to ``path`` with its ``reference_var`` ``config`` and ``class_names``.

    ``config`` must be the ``reference_var("tiny", **config)`` overrides ``var`` was built with: it is
    checked against ``var``'s weights before anything is written (a mismatch is a ValueError naming
    the field), so every saved checkpoint loads. ``stagevar_config``: a calibrated
    :class:`~stagevar.StageVARConfig` the checkpoint carries (``accelerate(model)`` then uses it).
    """
    if len(class_names) != var.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {var.num_classes} classes")
    tensors = {}
    for prefix, module in (("var.", var), ("vae.", var.vae_proxy[0])):
        for k, v in module.state_dict().items():
            t = v.detach().cpu().contiguous()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            tensors[prefix + k] = t
    where = "save_pretrained"
    full = _model_config(config, where)
    _check_shapes(full, {k: tuple(t.shape) for k, t in tensors.items()}, where,
                  "pass as config the reference_var('tiny', ...) overrides the model was built with")
    meta = {"format": FORMAT, "config": json.dumps(config), "class_names": json.dumps(list(class_names))}
    if stagevar_config is not None:
        meta[CONFIG_KEY] = _config_json(stagevar_config)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_save(tensors, path, meta)


def _config_json(config: Any) -> str:
    from ..config import StageVARConfig

    if not isinstance(config, StageVARConfig):
        raise TypeError(f"a checkpoint carries a StageVARConfig, got {type(config).__name__}")
    return config.to_json(indent=None)


def _atomic_save(tensors: Dict[str, torch.Tensor], path: str, meta: Dict[str, str]) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written checkpoint."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
        if os.path.exists(path):
            shutil.copymode(path, tmp)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)


def write_config_into(checkpoint: str, config: Any, out: Optional[str] = None) -> str:
    """Store ``config`` (a :class:`~stagevar.StageVARConfig`) in a checkpoint's metadata as
    ``stagevar_config``: into ``out`` (a new file), or replacing ``checkpoint`` atomically.
    Returns the path written."""
    from safetensors import SafetensorError, safe_open

    text = _config_json(config)
    try:
        with safe_open(checkpoint, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {checkpoint}: {_why_unreadable(checkpoint, str(e))}") from None
    meta[CONFIG_KEY] = text
    target = out or checkpoint
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    _atomic_save(tensors, target, meta)
    return target


def same_tensors(a: str, b: str) -> bool:
    """Whether two safetensors files hold the same tensors (names, dtypes and values)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(a, framework="pt") as fa, safe_open(b, framework="pt") as fb:
            if set(fa.keys()) != set(fb.keys()):
                return False
            return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())
    except (SafetensorError, OSError):
        return False


def _looks_local(name: str) -> bool:
    """A path, not a Hub repo id: it names a file type, starts like a path, or its first part is a local folder."""
    return (name.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json")) or name.startswith((".", "/", "~"))
            or os.sep in name and os.path.isdir(name.split(os.sep)[0]) or "\\" in name)


def checkpoint_file(name_or_path: str) -> str:
    """The local file a checkpoint name, path, folder or Hub repo id stands for (downloaded if need be).

    Raises:
        FileNotFoundError: nothing at that name or path; OSError: the Hub could not be reached.
    """
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
    if _looks_local(name_or_path):
        raise FileNotFoundError(f"no such file or folder: {name_or_path!r} (a local path; a Hugging Face Hub repo id "
                                f"has the form 'owner/name')")
    if name_or_path.count("/") == 1:
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(repo_id=name_or_path, filename=FILENAME)
        except Exception as e:  # offline, unknown repo, missing file: all say the same to the user
            raise OSError(f"could not fetch {FILENAME} of Hugging Face Hub repo {name_or_path!r} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). If the Hub is not reachable "
                          f"from this machine, download the file elsewhere and pass its local path.") from None
    raise FileNotFoundError(f"{name_or_path!r} is neither a bundled checkpoint ({', '.join(BUNDLED)}), a local "
                            f"file or folder, nor a Hugging Face Hub repo id of the form 'owner/name'")


def class_names_of(path: str) -> Optional[list]:
    """The class names a checkpoint's metadata lists (its header only; None if it lists none)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        raw = (f.metadata() or {}).get("class_names")
    return None if raw is None else json.loads(raw)


# ------------------------------------------------------------------------- reading the file
def _why_unreadable(path: str, reason: str) -> str:
    """What is wrong with a file safetensors refused to open, and what to do, from its first bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if size < 8:
            return f"it is {size} bytes, too short for a safetensors header: the file is truncated or empty; {_REFETCH}"
        n = int.from_bytes(head, "little")
        # torch.save's zip archive, or a bare pickle (protocol 2+ starts with 0x80): a safetensors header
        # length read from either is far beyond any real header
        if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and n > _MAX_HEADER):
            return ("not a safetensors file: it is a pickle/zip archive, as torch.save writes. Was it saved with "
                    "torch.save? Load it with torch.load (only if you trust its source) and write it with "
                    "stagevar.models.save_pretrained")
        if n > _MAX_HEADER:
            return (f"not a safetensors file (its first 8 bytes, {head!r}, are not a header length). Was it saved "
                    f"with torch.save or another format? Save the model with stagevar.models.save_pretrained")
        if 8 + n > size:
            return (f"the file was cut short: its header alone should be {n} bytes but only {size - 8} follow "
                    f"(an interrupted download or copy); {_REFETCH}")
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except Exception:
            return f"its safetensors header is damaged ({reason}); {_REFETCH}"
    if 8 + n + end > size:
        return (f"the file was cut short: its header lists {end} bytes of tensor data but only {size - 8 - n} follow "
                f"(an interrupted download or copy); {_REFETCH}")
    return f"it is not a readable safetensors file ({reason}); {_REFETCH}"


def _meta_json(meta: Dict[str, str], key: str, path: str) -> Any:
    if key not in meta:
        raise ValueError(f"the checkpoint {path} lacks stagevar metadata key {key!r}; it was not written by {_WRITERS} "
                         f"(or its metadata was edited). Save the model with stagevar.models.save_pretrained")
    try:
        return json.loads(meta[key])
    except ValueError as e:
        raise ValueError(f"the checkpoint {path} has stagevar metadata key {key!r} that is not valid JSON ({e}); "
                         f"the metadata is damaged: {_REFETCH}") from None


# ------------------------------------------------------------------ metadata against the file
def _finite(value: Any) -> bool:
    """A finite real number (not a bool, not an integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


_POSITIVE = ("depth", "embed_dim", "num_heads", "vocab_size", "z_channels", "ch", "num_classes")


def _model_config(config: Any, where: str) -> Dict[str, Any]:
    """``reference_var("tiny", **config)``'s full configuration, each field's type checked (no module is built)."""
    from .var import _VAR_DEFAULTS, VAR_SHAPES
    from ._shapes import shape_config

    if not isinstance(config, dict):
        raise ValueError(f"{where}: 'config' must be a JSON object of reference_var fields, got {type(config).__name__}")
    try:
        full = shape_config(VAR_SHAPES, _VAR_DEFAULTS, "tiny", config, "VAR")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None

    def bad(field: str, want: str) -> ValueError:
        return ValueError(f"{where}: {field}={full[field]!r} must be {want}")

    is_int = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    for field in _POSITIVE:
        if not is_int(full[field]) or full[field] < 1:
            raise bad(field, "a positive integer")
    if not is_int(full["num_down"]) or full["num_down"] < 0:
        raise bad("num_down", "a non-negative integer")
    pn = full["patch_nums"]
    if not isinstance(pn, (list, tuple)) or not pn or not all(is_int(p) and p >= 1 for p in pn):
        raise bad("patch_nums", "a non-empty list of positive integers (token-map sides, coarse to fine)")
    if not _finite(full["mlp_ratio"]) or full["mlp_ratio"] <= 0:
        raise bad("mlp_ratio", "a positive number (the FFN width over embed_dim, e.g. 4.0)")
    if not _finite(full["gate"]):
        raise bad("gate", "a finite number")
    for field in ("attn_l2_norm", "shared_aln"):
        if not isinstance(full[field], bool):
            raise bad(field, "true or false")
    if full["kv_layout"] not in ("BHLc", "BLHc"):
        raise bad("kv_layout", "'BHLc' or 'BLHc'")
    if not is_int(full["seed"]):
        raise bad("seed", "an integer")
    if full["embed_dim"] % full["num_heads"]:
        raise bad("num_heads", f"a divisor of embed_dim={full['embed_dim']}")
    return full


def _check_shapes(cfg: Dict[str, Any], shapes: Dict[str, Tuple[int, ...]], where: str, fix: str) -> None:
    """Every size the config implies, against the tensors' shapes; raise naming the first field that disagrees.

    Each size field (and each flag that adds tensors) is checked on a tensor it determines, so a config
    that passes cannot build a model much larger than the file.
    """
    def mismatch(field: str, detail: str) -> ValueError:
        return ValueError(f"{where}: config {field}={cfg[field]!r} does not match the weights: {detail}; {fix}")

    def dim(key: str, axis: int, want: int, field: str) -> None:
        if key not in shapes:
            raise ValueError(f"{where}: tensor {key!r}, which every stagevar VAR checkpoint holds, is missing: the "
                             f"file is incomplete or not a stagevar checkpoint; {fix}")
        shape = shapes[key]
        if len(shape) <= axis or shape[axis] != want:
            raise mismatch(field, f"tensor {key!r} has shape {list(shape)}, whose dimension {axis} should be {want}")

    def present(key: str, field: str, want: bool) -> None:
        if (key in shapes) != want:
            raise mismatch(field, f"tensor {key!r} is {'missing' if want else 'present'}")

    C, V, z, pn = cfg["embed_dim"], cfg["vocab_size"], cfg["z_channels"], list(cfg["patch_nums"])
    dim("var.class_emb.weight", 1, C, "embed_dim")
    dim("var.class_emb.weight", 0, cfg["num_classes"] + 1, "num_classes")
    dim("var.pos_1LC", 1, sum(p * p for p in pn), "patch_nums")
    dim("var.lvl_embed.weight", 0, len(pn), "patch_nums")
    dim("var.pos_start", 1, pn[0] ** 2, "patch_nums")
    blocks = sorted({int(m.group(1)) for k in shapes for m in [re.match(r"var\.blocks\.(\d+)\.", k)] if m})
    if blocks != list(range(cfg["depth"])):
        raise mismatch("depth", f"the weights hold {len(blocks)} blocks" + (f" (indices {blocks[0]}..{blocks[-1]})" if blocks else ""))
    dim("var.head.weight", 0, V, "vocab_size")
    dim("vae.quantize.embedding.weight", 0, V, "vocab_size")
    dim("vae.quantize.embedding.weight", 1, z, "z_channels")
    dim("var.word_embed.weight", 1, z, "z_channels")
    present("var.blocks.0.ada_gss", "shared_aln", cfg["shared_aln"])
    present("var.blocks.0.attn.scale_mul_1H11", "attn_l2_norm", cfg["attn_l2_norm"])
    if cfg["attn_l2_norm"]:
        dim("var.blocks.0.attn.scale_mul_1H11", 1, cfg["num_heads"], "num_heads")
    hidden = C * cfg["mlp_ratio"]
    dim("var.blocks.0.ffn.fc1.weight", 0, round(hidden) if math.isfinite(hidden) else -1, "mlp_ratio")
    dim("vae.encoder.net.0.weight", 0, cfg["ch"], "ch")
    for part, last in (("encoder", 2 * cfg["num_down"] + 4), ("decoder", 3 * cfg["num_down"] + 4)):
        layers = [int(m.group(1)) for k in shapes for m in [re.match(rf"vae\.{part}\.net\.(\d+)\.", k)] if m]
        if max(layers, default=-1) != last:
            raise mismatch("num_down", f"the VQVAE {part} has {max(layers, default=-1) + 1} layers, not {last + 1}")


def load_pretrained(name_or_path: Union[str, "os.PathLike[str]"] = "stagevar-tiny-var",
                    device: Optional[torch.device] = None):
    """Load a reference VAR checkpoint: a bundled name, a local file/folder, or a Hub repo id.

    Returns the VAR (eval mode, float32) with its VQVAE attached as upstream does
    (``vae_proxy[0]``) and ``class_names`` set; ``stagevar_config`` too when the checkpoint carries
    a calibrated config (``stagevar.accelerate(model)`` then uses it).

    Raises:
        TypeError: ``name_or_path`` is not a string or path.
        FileNotFoundError: nothing at that name or path.
        ValueError: the file is not a (complete) safetensors file, lacks stagevar's metadata, or its
            metadata does not match its tensors. The message names the path, what is wrong, and what
            to do; nothing is built before the metadata has been checked against the tensors' shapes.
    """
    from safetensors import SafetensorError, safe_open

    from . import reference_var

    if not isinstance(name_or_path, (str, os.PathLike)) or isinstance(os.fspath(name_or_path), bytes):
        raise TypeError(f"load_pretrained takes a checkpoint name or path: a bundled name ({', '.join(BUNDLED)}), "
                        f"a local .safetensors file or folder, or a Hugging Face Hub repo id 'owner/name'; "
                        f"got {name_or_path!r}")
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"load_pretrained: device={device!r} is not a device; give a torch.device, 'cpu', "
                             f"'cuda' or 'cuda:N', or None for the CPU") from None
    path = checkpoint_file(os.fspath(name_or_path))
    try:
        f = safe_open(path, framework="pt")
    except SafetensorError as e:
        raise ValueError(f"cannot load {path}: {_why_unreadable(path, str(e))}") from None
    with f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            found = "it has no stagevar metadata key 'format'" if "format" not in meta else f"format {meta['format']!r}, expected {FORMAT!r}"
            raise ValueError(f"{path} is not a stagevar checkpoint ({found}); it was not written by {_WRITERS}. "
                             f"Save the model with stagevar.models.save_pretrained")
        config = _meta_json(meta, "config", path)
        class_names = _meta_json(meta, "class_names", path)
        where = f"the checkpoint {path}"
        full = _model_config(config, where)
        _check_shapes(full, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, where,
                      f"its metadata does not describe its tensors (edited, or written with another config); {_REFETCH}")
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names) \
                or len(class_names) != full["num_classes"]:
            raise ValueError(f"{where}: metadata 'class_names' must be a list of {full['num_classes']} strings "
                             f"(num_classes), got {str(class_names)[:120]}; {_REFETCH}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    var = reference_var("tiny", **config)
    vae = var.vae_proxy[0]
    for prefix, module in (("var.", var), ("vae.", vae)):
        sd = {k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:400]
            raise ValueError(f"{where}: its tensors do not fit the model its metadata describes ({detail}); {_REFETCH}") from None
    var.class_names = class_names
    if CONFIG_KEY in meta:
        from ..config import ConfigError, StageVARConfig

        try:
            var.stagevar_config = StageVARConfig.from_json(meta[CONFIG_KEY])
        except ConfigError as e:
            raise ValueError(f"{where}: its metadata '{CONFIG_KEY}' is not a valid StageVARConfig ({e}); write a "
                             f"valid one with stagevar.models.write_config_into or drop the key") from None
    var.eval()
    vae.eval()
    if device is not None:
        var.to(device)
        vae.to(device)
    return var


def _build_pretrained(shape, device, aspect, cfg, checkpoint: Optional[str] = None) -> ReferenceModel:
    name = "stagevar-tiny-var" if checkpoint is None else checkpoint
    var = load_pretrained(name, device=device)
    return ReferenceModel(f"trained VAR {name!r}", var, dict(cfg=cfg))


BUILDERS = {"pretrained": ModelBuilder("pretrained", "the trained stagevar-tiny-var (bundled weights), or the checkpoint "
                                       "--checkpoint names", (), (), _build_pretrained,
                                       available=lambda: os.path.exists(BUNDLED["stagevar-tiny-var"]), checkpoints=True)}
