"""FoundationVision Infinity (``infinity/models/infinity.py``, class ``Infinity``), duck-typed on its names.

Follows the loop of ``Infinity.autoregressive_infer_cfg`` in github.com/FoundationVision/Infinity
at commit 4c27bbb (2025-11-10): packed text condition with the learned null prompt or a negative
prompt for CFG, per-scale ``cfg_list``/``tau_list``, CFG on logits or on hidden states, 2D RoPE
tables keyed by schedule, the bitwise head and the model's own sampler and ``rng``, codes summed
with ``z_interplote_up``, and ``apply_spatial_patchify=1`` (every public Infinity-8B checkpoint:
each token is a 2x2 patch of latents with 4x the code channels; the codes are summed on the
VAE's grid, twice the token grid, sampled bits are ``pixel_shuffle``d to it and the next input is
interpolated there then ``pixel_unshuffle``d; RoPE, level embedding and low-rank restoration stay
on the token grid). Refuses: ``vae_type=0`` (index labels), ``gt_leak > 0`` and the parameters it does not implement (see ``consumed``), and
CFG on hidden states together with low-rank units that keep both branches.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import sampling as _own_helpers
from .base import Adapter, CallState

_SAMPLER = "sample_with_top_k_top_p_also_inplace_modifying_logits_"


class _AnyKey(dict):
    """A RoPE table lookup that returns one tensor for whatever schedule key the block builds."""

    def __init__(self, grid: torch.Tensor):
        super().__init__()
        self.grid = grid

    def __getitem__(self, key):
        return self.grid

    def __contains__(self, key):
        return True


@dataclass
class _InfinityCall(CallState):
    use_cfg: bool
    schedule: list              # the call's full scale_schedule, as passed
    cfg_list: Sequence[float]
    tau_list: Sequence[float]
    top_k: int
    top_p: float
    vae: Any
    ret_img: bool
    cfg_on_logits: bool
    mix_after: Set[int]         # ids of the blocks after which hidden states are CFG-mixed
    cond_BD: torch.Tensor       # (rows, D)
    cond_BD_or_gss: torch.Tensor
    ca_kv: tuple                # (kv_compact, cu_seqlens_k, max_seqlen_k) of the rows kept
    text_split: dict            # branch -> (first packed text row, end row, longest text): host ints
    summed_codes: Any           # (B, d, 1, H, W) on the VAE grid; the int 0 until the first codes, as upstream
    patchify: bool = False      # apply_spatial_patchify: the VAE grid is twice the token grid
    lvl_before: frozenset = frozenset({0})  # the blocks before which the level embedding is added
    rope_from_zero: bool = False  # the blocks' self-attention reads RoPE rows from 0 (no scale_ind; see _rope_for)
    rope: Optional[tuple] = field(default=None)  # (positions, table) of the current low-rank unit
    branch_ca_kv: Optional[dict] = None  # text padded to a bucket: each branch's own ca_kv, for keep_rows


class InfinityAdapter(Adapter):
    family = "infinity"
    required = ("block_chunks", "unregistered_blocks", "rope2d_freqs_grid", "cfg_uncond", "text_norm",
                "text_proj_for_sos", "text_proj_for_ca", "shared_ada_lin", "lvl_embed", "pos_start", "word_embed",
                "head_nm", "head", "get_logits", "add_lvl_embeding", "autoregressive_infer_cfg")

    # What the loop reads; upstream's other parameters (force_gt_Bhw, cfg_sc, ratio_Bl1, gumbel, norm_cfg,
    # cfg_exp_k, softmax_merge_topk, gt_ls_Bl, save_img_path, sampling_per_bits) are refused when given a
    # value other than their default: stagevar does not implement them.
    kv_attr = "sa"
    row_fields = ("cond_BD", "cond_BD_or_gss")
    consumed = frozenset({"vae", "scale_schedule", "label_B_or_BLT", "B", "negative_label_B_or_BLT", "g_seed",
                          "cfg_list", "tau_list", "top_k", "top_p", "cfg_insertion_layer", "vae_type", "ret_img",
                          "trunk_scale", "gt_leak", "returns_vemb", "inference_mode"})

    def __init__(self, model: nn.Module):
        super().__init__(model)
        for i, b in enumerate(self.blocks()):
            if not hasattr(b, "sa") or not hasattr(b.sa, "kv_caching"):
                raise TypeError(f"Infinity block {i} has no sa.kv_caching(); stagevar needs upstream's CrossAttnBlock")
        self.default_unit_blocks = len(model.block_chunks[0].module)

    @property
    def _blocks(self) -> List[nn.Module]:
        """The blocks, read from the model at every use: a block replaced after ``accelerate`` runs."""
        return [m for chunk in self.model.block_chunks for m in chunk.module]

    @property
    def _chunk_starts(self) -> List[int]:
        starts, n = [], 0
        for chunk in self.model.block_chunks:
            starts.append(n)
            n += len(chunk.module)
        return starts

    @property
    def _sample(self):
        """The model module's own sampler, else ours; looked up per use, so a replacement is used."""
        module = sys.modules.get(type(self.model).__module__)
        return getattr(module, _SAMPLER, _own_helpers.sample_with_top_k_top_p_)

    @property
    def default_preset(self) -> str:  # type: ignore[override]
        """``infinity-8b`` for a patchified model (every public 8B checkpoint) or one at least as wide
        as Infinity-8B (C = 3584); ``infinity-2b`` otherwise. Block count does not decide."""
        m = self.model
        wide = int(getattr(m, "C", m.pos_start.shape[-1])) >= 3584
        return "infinity-8b" if getattr(m, "apply_spatial_patchify", 0) or wide else "infinity-2b"

    def blocks(self) -> List[nn.Module]:
        return self._blocks

    def helpers(self):
        """The sampler this adapter calls: the model module's own, else ours (part of a CUDA-graph key)."""
        return (self._sample,)

    def default_schedule(self):
        return None  # chosen per call

    def known_schedules(self):
        """The schedules the model has RoPE tables for (keys ``str(tuple(scale_schedule))``)."""
        import ast

        out = []
        for key in getattr(self.model, "rope2d_freqs_grid", {}):
            try:
                sched = ast.literal_eval(key)
                out.append([(int(h), int(w)) for _, h, w in sched])
            except (ValueError, SyntaxError, TypeError):
                continue
        return out

    def device(self) -> torch.device:
        return self.model.pos_start.device

    def check_units(self, units: Sequence[Tuple[int, int]]) -> None:
        if not getattr(self.model, "add_lvl_embeding_only_first_block", 1):
            starts = {lo for lo, _ in units}
            missing = [c for c in self._chunk_starts if c not in starts]
            if missing:
                from ..config import ConfigError
                raise ConfigError(
                    f"this Infinity adds the level embedding before every block chunk (starting at blocks {missing}); "
                    f"low-rank units must start at chunk boundaries: use unit_blocks={self.default_unit_blocks} or a divisor")

    def schedule(self, st: _InfinityCall):
        return [(int(h), int(w)) for _, h, w in st.schedule]  # trunk_scale: st.run_scales

    takes_prompts = True

    def condition_kwargs(self, conditions, encode=None) -> dict:
        if encode is None:
            raise ValueError("Infinity conditions are prompts: pass encode= (prompts -> the packed text condition, "
                             "e.g. bundle.encode for the reference model, or your T5 encode_prompt)")
        return dict(B=len(conditions), label_B_or_BLT=encode(list(conditions)))

    # ------------------------------------------------------------------------------------------
    def _text_condition(self, cond, negative, use_cfg: bool):
        """``(sos, cond_BD, ca_kv, text_split)``; ``text_split`` holds host ints only (no device read):
        ``{branch: (first packed row, end row, longest text)}`` for cutting the text K/V to one branch."""
        m = self.model
        kv_compact, lens, cu_seqlens_k, max_seqlen_k = cond
        n_cond = kv_compact.shape[0]
        split = {"cond": (0, n_cond, int(max_seqlen_k))}
        if use_cfg:
            if negative is not None:
                kv_un, _, cu_un, max_un = negative
                if cu_un.shape[0] != cu_seqlens_k.shape[0]:
                    raise ValueError(f"negative_label_B_or_BLT packs {cu_un.shape[0] - 1} negative prompts but "
                                     f"label_B_or_BLT packs {cu_seqlens_k.shape[0] - 1} prompts: give one negative "
                                     f"prompt per prompt (B of them), or None for the learned null prompt")
                kv_compact = torch.cat((kv_compact, kv_un), dim=0)
                cu_seqlens_k = torch.cat((cu_seqlens_k, cu_un[1:] + cu_seqlens_k[-1]))
                split["uncond"] = (n_cond, kv_compact.shape[0], int(max_un))
                max_seqlen_k = max(max_seqlen_k, max_un)
            else:  # the learned null prompt, cut to each prompt's length
                kv_un = torch.cat([m.cfg_uncond[:int(le)] for le in lens], dim=0).to(kv_compact.dtype)
                kv_compact = torch.cat((kv_compact, kv_un), dim=0)
                cu_seqlens_k = torch.cat((cu_seqlens_k, cu_seqlens_k[1:] + cu_seqlens_k[-1]))
                split["uncond"] = (n_cond, kv_compact.shape[0], int(max_seqlen_k))
        kv_compact = m.text_norm(kv_compact)
        sos = cond_BD = m.text_proj_for_sos((kv_compact, cu_seqlens_k, max_seqlen_k))
        return sos, cond_BD, (m.text_proj_for_ca(kv_compact), cu_seqlens_k, max_seqlen_k), split

    # -- text bucketing ----------------------------------------------------------------------------
    def default_text_buckets(self) -> Tuple[int, ...]:
        """A few lengths up to the model's text length (the rows of its learned null prompt)."""
        longest = int(self.model.cfg_uncond.shape[0])
        return tuple(b for b in (32, 64, 128, 256) if b < longest) + (longest,)

    def text_lengths(self, args: tuple, kwargs: dict) -> Optional[Tuple[int, ...]]:
        """Every packed text's length (the prompts', then the negative prompts'), from the host
        ``lens`` lists of upstream's packed tuples."""
        try:
            a = self.bind_call(args, kwargs)
            lens = [int(n) for n in a["label_B_or_BLT"][1]]
            negative = a.get("negative_label_B_or_BLT")
            if negative is not None:
                lens += [int(n) for n in negative[1]]
            return tuple(lens) or None
        except Exception:  # noqa: BLE001 -- the call itself says what is wrong with its arguments
            return None

    def pad_text(self, st: _InfinityCall, length: int) -> None:
        """Zero rows after the packed text (``ca_kv``), ``length`` per text: no ``cu_seqlens_k`` span
        reads them, so cross-attention sees the same tokens; ``max_seqlen_k`` becomes ``length``.
        The pooled start token and the text norm ran on the unpadded text in :meth:`begin`. Under
        CFG each branch's text is padded apart too (what :meth:`keep_rows` switches to), so that the
        cut to one branch has fixed offsets."""
        kv, cu, longest = st.ca_kv
        if length < longest:
            raise ValueError(f"text bucket {length} is shorter than the call's longest text ({longest} tokens)")
        n_texts = cu.shape[0] - 1
        st.ca_kv = (F.pad(kv, (0, 0, 0, n_texts * length - kv.shape[0])), cu, length)
        if st.use_cfg:
            B, branches = st.B, {}
            for name, lo in (("cond", 0), ("uncond", B)):
                first, end, _ = st.text_split[name]
                rows = kv[first:end]
                branches[name] = (F.pad(rows, (0, 0, 0, B * length - rows.shape[0])), cu[lo:lo + B + 1] - cu[lo],
                                  length)
            st.branch_ca_kv = branches
            st.text_split = {name: (0, B * length, length) for name in branches}

    def begin(self, args: tuple, kwargs: dict, cache_condition: bool = False) -> _InfinityCall:
        m = self.model
        a = self.bind_call(args, kwargs)
        blocks = self.blocks()
        sched, cond, vae = a.get("scale_schedule"), a.get("label_B_or_BLT"), a.get("vae")
        if sched is None or cond is None or vae is None:
            raise ValueError("autoregressive_infer_cfg needs vae=, scale_schedule= and label_B_or_BLT= (the packed prompts)")
        K = len(sched)
        cfg_list, tau_list = list(a.get("cfg_list") or []), list(a.get("tau_list") or [])
        if len(cfg_list) < K or len(tau_list) < K:
            raise ValueError(f"cfg_list and tau_list need one entry per scale ({K}); got {len(cfg_list)} and {len(tau_list)}")
        if a.get("vae_type", 32) == 0 or not getattr(m, "use_bit_label", 1):
            raise NotImplementedError("stagevar supports Infinity's bitwise (bit_label) head only; vae_type=0 is not supported")
        insertion = list(a.get("cfg_insertion_layer", [0]))
        bad = [c for c in insertion if c > 1]
        if bad:
            raise ValueError(f"cfg_insertion_layer entries must be <= 1 (0: logits, <0: hidden states), got {bad}")
        B = int(a.get("B", 1))
        if cond[2].shape[0] != B + 1:
            raise ValueError(f"label_B_or_BLT packs {cond[2].shape[0] - 1} prompts but B={B}")
        if (a.get("gt_leak") or 0) > 0:
            raise NotImplementedError("gt_leak > 0 (teacher-forced scales) is not supported by stagevar")
        use_cfg = any(c != 1 for c in cfg_list)  # as upstream: any entry of the whole list, exactly 1
        rows = 2 * B if use_cfg else B
        g_seed = a.get("g_seed")
        rng = self.seeded_generator(g_seed)
        sos, cond_BD, ca_kv, text_split = self._text_condition(cond, a.get("negative_label_B_or_BLT"), use_cfg)
        # As upstream: the AdaLN condition with CUDA autocast off (CPU autocast is left on) and
        # cast to fp32 -- the blocks add it to their own ada_gss, which may be bf16.
        with torch.autocast("cuda", enabled=False):
            cond_BD_or_gss = m.shared_ada_lin(cond_BD.float()).float().contiguous()
        st = _InfinityCall(
            B=B, use_cfg=use_cfg, schedule=sched, run_scales=min(K, int(a.get("trunk_scale", 1000))),
            cfg_list=cfg_list, tau_list=tau_list, top_k=a.get("top_k", 0) or getattr(m, "top_k", 0),
            top_p=a.get("top_p", 0.0) or getattr(m, "top_p", 0.0), g_seed=g_seed,
            rng=rng, vae=vae, ret_img=bool(a.get("ret_img", False)), cfg_on_logits=0 in insertion,
            mix_after={id(blocks[len(blocks) + c]) for c in insertion if c < 0 and len(blocks) + c >= 0},
            cond_BD=cond_BD, cond_BD_or_gss=cond_BD_or_gss, ca_kv=ca_kv, text_split=text_split,
            next_x=sos.unsqueeze(1).expand(rows, 1, -1) + m.pos_start.expand(rows, 1, -1), summed_codes=0,
            patchify=bool(getattr(m, "apply_spatial_patchify", 0)),
            lvl_before=frozenset([0] if getattr(m, "add_lvl_embeding_only_first_block", 1) else self._chunk_starts),
            rope_from_zero=any(getattr(b, "fused_norm_func", True) is None for b in blocks))
        for b in blocks:
            b.sa.kv_caching(True)
        return st

    def unit_input(self, st: _InfinityCall, si: int, first_block: int, x: torch.Tensor) -> torch.Tensor:
        if first_block in st.lvl_before:
            # The values upstream's add_lvl_embeding adds (row si of lvl_embed, in place, so the
            # dtype stays x's), without the host-built index tensor it makes at every scale. A copy:
            # never touch a tensor kept as a previous-scale unit output.
            out = x.clone()
            out += self.model.lvl_embed.weight[si]
            return out
        return x

    def _rope_for(self, st: _InfinityCall, si: int, positions: torch.Tensor) -> _AnyKey:
        """A RoPE table whose rows at this scale's offset are those of ``positions`` ``(rows, r)``.

        Upstream's ``CrossAttnBlock`` (4c27bbb) forwards ``scale_ind`` to self-attention only on its
        fused-norm path; without it (``fused_norm_func is None``) the attention reads the table from
        row 0 at every scale, so token ``j`` of a scale gets row ``j``. The table holds what each
        path reads: rows ``start + p`` at ``start`` and rows ``p`` at 0 -- both where they do not
        overlap, else the one this model's blocks read.
        """
        if st.rope is not None and st.rope[0] is positions:
            return st.rope[1]
        table = self.model.rope2d_freqs_grid
        key = str(tuple(st.schedule))
        if key not in table:
            key = str(tuple(tuple(int(v) for v in s) for s in st.schedule))
        grid = table[key]
        # (..., batch, heads, tokens, F): the batch axis is dim -4 and broadcasts (size 1)
        if grid.dim() < 4 or grid.shape[-4] != 1:
            raise RuntimeError(f"unexpected RoPE table shape {tuple(grid.shape)}: stagevar expects (..., 1, heads, "
                               f"tokens, F) with a broadcast batch axis at dim -4")
        start = sum(int(h) * int(w) for _, h, w in st.schedule[:si])
        rows, r = positions.shape

        def rows_at(offset: int) -> torch.Tensor:  # (..., rows, H, r, F): the table rows offset + positions
            flat = (positions + offset).reshape(-1).to(grid.device)
            sel = grid.index_select(-2, flat).unflatten(-2, (rows, r))  # (..., 1, H, rows, r, F)
            return sel.movedim(-3, -5).squeeze(-4)

        # the rows each block path reads: from the scale's offset (fused norms), from 0 (upstream's
        # block without them), both where the two do not overlap; only those are selected
        from_zero = st.rope_from_zero
        scaled = rows_at(start) if start >= r or not from_zero else None
        zero = rows_at(0) if start >= r or from_zero else None
        like = zero if scaled is None else scaled
        full = like.new_zeros(*like.shape[:-2], start + r, like.shape[-1])
        if scaled is not None:
            full[..., start:, :] = scaled
        if zero is not None:
            full[..., :r, :] = zero
        st.rope = (positions, _AnyKey(full))
        return st.rope[1]

    def run_block(self, st: _InfinityCall, block: nn.Module, x: torch.Tensor, si: int,
                  positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        grid = self.model.rope2d_freqs_grid if positions is None else self._rope_for(st, si, positions)
        x = block(x=x, cond_BD=st.cond_BD_or_gss, ca_kv=st.ca_kv, attn_bias_or_two_vector=None,
                  scale_schedule=st.schedule, rope2d_freqs_grid=grid, scale_ind=si)
        if st.use_cfg and st.branch == "both" and st.cfg_list[si] != 1 and id(block) in st.mix_after:
            if positions is not None:
                raise ValueError("cfg_insertion_layer < 0 mixes the hidden states of the two CFG halves, which a low-rank "
                                 "unit running both branches cannot do (each row keeps its own tokens); use "
                                 "branch='uncond' or 'cond', or cfg_insertion_layer=[0]")
            cfg = st.cfg_list[si]
            x = cfg * x[:st.B] + (1 - cfg) * x[st.B:]
            x = torch.cat((x, x), 0)
        return x

    def keep_rows(self, st: _InfinityCall, branch: str) -> None:
        if not st.use_cfg:
            raise ValueError("one-branch refinement needs CFG (some cfg_list entry != 1); this call has a single branch")
        super().keep_rows(st, branch)  # the KV caches, next_x and the condition
        if st.branch_ca_kv is not None:  # padded to a bucket: the branch's own padded text
            st.ca_kv = st.branch_ca_kv[branch]
            return
        B = st.B
        kv, cu, _ = st.ca_kv
        lo, hi = (0, B) if branch == "cond" else (B, 2 * B)
        first, end, longest = st.text_split[branch]  # host ints: no device read in the loop
        st.ca_kv = (kv[first:end], cu[lo:hi + 1] - cu[lo], longest)

    def _logits(self, st: _InfinityCall, si: int, x: torch.Tensor) -> torch.Tensor:
        m, B = self.model, st.B
        tau, cfg = st.tau_list[si], st.cfg_list[si]
        if st.branch != "both":  # one branch: its own logits
            return m.get_logits(x, st.cond_BD).mul(1 / tau)
        if st.use_cfg and cfg != 1 and st.cfg_on_logits:  # as upstream: both halves only where cfg != 1
            logits = m.get_logits(x, st.cond_BD).mul(1 / tau)
            return cfg * logits[:B] + (1 - cfg) * logits[B:]
        return m.get_logits(x[:B], st.cond_BD[:B]).mul(1 / tau)

    @staticmethod
    def _vae_grid(st: _InfinityCall, si: int) -> Tuple[int, int, int]:
        """Scale ``si``'s ``(1, h, w)`` on the VAE's grid: twice the token grid under patchify."""
        t, h, w = st.schedule[si]
        return (t, 2 * h, 2 * w) if st.patchify else (t, h, w)

    def _summed_codes(self, st: _InfinityCall) -> torch.Tensor:
        """The codes summed so far ``(B, d, 1, H, W)`` on the VAE grid (zeros before the first scale's)."""
        if isinstance(st.summed_codes, torch.Tensor):
            return st.summed_codes
        d = self.model.word_embed.in_features // (4 if st.patchify else 1)
        return torch.zeros(st.B, d, *self._vae_grid(st, -1), device=self.device())

    def _next_input(self, st: _InfinityCall, si: int) -> None:
        K = len(st.schedule)
        if si >= K - 1:
            return
        m = self.model
        nxt = F.interpolate(self._summed_codes(st), size=self._vae_grid(st, si + 1),
                            mode=st.vae.quantizer.z_interplote_up).squeeze(-3)  # (B, d, h, w) on the VAE grid
        if st.patchify:
            nxt = F.pixel_unshuffle(nxt, 2)  # (B, 4d, h, w) on the token grid
        nxt = nxt.reshape(*nxt.shape[:2], -1).permute(0, 2, 1)  # (B, h*w, d), upstream's ops and so its strides
        norm0 = getattr(m, "norm0_ve", None)
        x = m.word_embed(nxt if norm0 is None else norm0(nxt))
        st.next_x = x.repeat(2, 1, 1) if (st.use_cfg and st.branch == "both") else x

    def predict(self, st: _InfinityCall, si: int, x: torch.Tensor) -> torch.Tensor:
        B = st.B
        _, h, w = st.schedule[si]
        logits = self._logits(st, si, x).reshape(B, -1, 2)
        idx_Bld = self._sample(logits, rng=st.rng, top_k=st.top_k, top_p=st.top_p, num_samples=1)[:, :, 0]
        bits_Bhwd = idx_Bld.reshape(B, h, w, -1)
        if st.patchify:  # each token's 4d bits are a 2x2 patch of d-bit latents: (B, 2h, 2w, d)
            bits_Bhwd = F.pixel_shuffle(bits_Bhwd.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        codes = st.vae.quantizer.lfq.indices_to_codes(bits_Bhwd.unsqueeze(1), label_type="bit_label")
        final = self._vae_grid(st, -1)
        # `+=` from the int 0, as upstream: the sum takes the first codes' dtype and memory layout
        # (channels-last: the quantizer returns a permuted view), then adds in place. The layout
        # sets the strides of the next word_embed input, and a CPU bf16 linear adds its bias in
        # another order for a transposed input than for a contiguous one.
        if si != len(st.schedule) - 1:
            st.summed_codes += F.interpolate(codes, size=final, mode=st.vae.quantizer.z_interplote_up)
        else:
            st.summed_codes += codes
        self._next_input(st, si)
        return idx_Bld.reshape(B, h * w, -1)

    def skip_scale(self, st: _InfinityCall, si: int) -> None:
        self._next_input(st, si)

    def decode_partial(self, st: _InfinityCall) -> torch.Tensor:
        return (st.vae.decode(self._summed_codes(st).squeeze(-3)) + 1) / 2

    def branch_logits(self, st: _InfinityCall, x: torch.Tensor):
        if not st.use_cfg:
            raise ValueError("calibration compares the two CFG branches: set some cfg_list entry != 1")
        logits = self.model.get_logits(x, st.cond_BD)
        return logits[:st.B].reshape(st.B, -1, 2), logits[st.B:].reshape(st.B, -1, 2)

    def decoder(self, call_kwargs: dict):
        return call_kwargs["vae"], "decode"

    def images_of(self, output) -> torch.Tensor:
        img = output[2]
        if not isinstance(img, torch.Tensor):
            raise ValueError("pass ret_img=True so the call returns images")
        return img.flip(dims=(3,)).permute(0, 3, 1, 2).float() / 255  # uint8 BHWC BGR -> float BCHW RGB

    def final_tensors(self, st: _InfinityCall) -> List[torch.Tensor]:
        return [self._summed_codes(st)]

    def finish(self, st: _InfinityCall):
        img = []
        if st.ret_img:
            img = self.decode_partial(st)
            img = img.permute(0, 2, 3, 1).mul_(255).to(torch.uint8).flip(dims=(3,))
        return [], [], img

    def cache_lengths(self):
        return [None if b.sa.cached_k is None else (b.sa.cached_k.shape[0], b.sa.cached_k.shape[2]) for b in self._blocks]
