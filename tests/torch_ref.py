"""PyTorch references for the parity tests.

* diffusers' WanTransformer3DModel in a tiny config, with every parameter randomised;
* the rename table of docs/REFERENCE.md §2 (diffusers -> Wan original names), written here
  independently of stp_jax.convert;
* ``TorchSpaceTimeDiT``: the ReCamMaster / SpaceTimePilot forward of docs/REFERENCE.md §1
  built from diffusers' own Wan submodules plus torch Linear/Conv1d/GroupNorm additions.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4,
            text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)


def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Every parameter gets fresh noise (norm scales around 1), so no weight is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or re.search(r"norm\d?\.weight$", name):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)
    return module


def tiny_diffusers_wan(seed: int = 0, **kw):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return randomize_(WanTransformer3DModel(**{**TINY, **kw}).eval(), seed)


# docs/REFERENCE.md §2, original -> diffusers; applied in reverse here.
_REF_RENAMES = [
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
]
_REF_BLOCK = [
    ("modulation", "scale_shift_table"),
    ("self_attn.q.", "attn1.to_q."), ("self_attn.k.", "attn1.to_k."), ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."), ("self_attn.norm_q.", "attn1.norm_q."), ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."), ("cross_attn.k.", "attn2.to_k."), ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."), ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."), ("norm3.", "norm2."), ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
]


def diffusers_to_wan_original(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        nk = None
        if k == "scale_shift_table":
            nk = "head.modulation"
        elif m := re.match(r"blocks\.(\d+)\.(.*)$", k):
            for orig, diff in _REF_BLOCK:
                if m[2].startswith(diff):
                    nk = f"blocks.{m[1]}.{orig}{m[2][len(diff):]}"
                    break
        else:
            for orig, diff in _REF_RENAMES:
                if k.startswith(diff):
                    nk = orig + k[len(diff):]
            if k.startswith("patch_embedding."):
                nk = k
        assert nk is not None, f"no rename for {k}"
        out[nk] = v
    return out


class TorchTemporalDownsampler(nn.Module):
    def __init__(self, dim, groups):
        super().__init__()
        self.temporal_conv1 = nn.Conv1d(dim, dim, 3, stride=2)
        self.norm1 = nn.GroupNorm(groups, dim)
        self.temporal_conv2 = nn.Conv1d(dim, dim, 3, stride=2)
        self.norm2 = nn.GroupNorm(groups, dim)

    def forward(self, x):  # [B, T, D] -> [B, F, D]
        b, t, d = x.shape
        first, rest = x[:, :1], x[:, 1:]
        n = math.ceil((t - 1) / 4)
        if n * 4 > t - 1:
            rest = torch.cat([rest, rest[:, -1:].expand(b, n * 4 - (t - 1), d)], 1)
        h = rest.reshape(b * n, 4, d).transpose(1, 2)  # [B*n, D, 4]
        h = F.silu(self.norm1(self.temporal_conv1(F.pad(h, (2, 0)))))
        h = F.silu(self.norm2(self.temporal_conv2(F.pad(h, (2, 0)))))  # [B*n, D, 1]
        return torch.cat([first, h[..., 0].reshape(b, n, d)], 1)


def wan_sinusoid(pos, dim):
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    a = pos.double()[..., None] * freqs
    return torch.cat([torch.cos(a), torch.sin(a)], -1).float()


class TorchSpaceTimeDiT(nn.Module):
    """Wan (diffusers modules) + per-block camera encoder, projector, time embedding."""

    def __init__(self, mode="spacetimepilot", groups=8, seed=0, **kw):
        super().__init__()
        self.mode = mode
        self.wan = tiny_diffusers_wan(seed, **kw)
        cfg = self.wan.config
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.freq_dim = cfg.freq_dim
        torch.manual_seed(seed + 1)
        self.extra = nn.ModuleList()
        for _ in range(cfg.num_layers):
            m = nn.Module()
            m.cam_encoder = nn.Linear(12, dim)
            m.projector = nn.Linear(dim, dim)
            if mode == "spacetimepilot":
                m.frame_time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
                m.temporal_downsampler = TorchTemporalDownsampler(dim, groups)
            self.extra.append(m)
        randomize_(self.extra, seed + 2)

    def original_state_dict(self):
        sd = diffusers_to_wan_original(self.wan.state_dict())
        for i, m in enumerate(self.extra):
            for k, v in m.state_dict().items():
                sd[f"blocks.{i}.{k}"] = v
        return sd

    def forward(self, x, timestep, ctx, tgt_cam, src_cam=None, tgt_time=None, src_time=None):
        """x [B, C, F, H, W] (target then source frames); returns [B, C, F, H, W]."""
        w = self.wan
        b, _, f, hp, wp = x.shape
        pt, ph, pw = w.config.patch_size
        hh, ww = hp // ph, wp // pw
        rope = w.rope(x)
        h = w.patch_embedding(x).flatten(2).transpose(1, 2)
        temb, tproj, ctx, _ = w.condition_embedder(timestep, ctx, None)
        tproj = tproj.unflatten(1, (6, -1))
        if self.mode == "recammaster":
            cams = torch.cat([tgt_cam, tgt_cam], 1)
        else:
            cams = torch.cat([tgt_cam, src_cam], 1)
        for blk, ext in zip(w.blocks, self.extra):
            sh, sc, g, c_sh, c_sc, c_g = (blk.scale_shift_table + tproj.float()).chunk(6, dim=1)
            nh = blk.norm1(h.float()) * (1 + sc) + sh
            cond = ext.cam_encoder(cams)  # [B, F, D]
            if self.mode == "spacetimepilot":
                tt = [ext.temporal_downsampler(ext.frame_time_embedding(wan_sinusoid(t, self.freq_dim)))
                      for t in (tgt_time, src_time)]
                cond = cond + torch.cat(tt, 1)
            nh = (nh.unflatten(1, (f, hh * ww)) + cond[:, :, None]).flatten(1, 2)
            h = h + ext.projector(blk.attn1(nh, None, None, rope)) * g
            h = h + blk.attn2(blk.norm2(h.float()), ctx, None, None)
            nh = blk.norm3(h.float()) * (1 + c_sc) + c_sh
            h = h + blk.ffn(nh) * c_g
        sh, sc = (w.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        h = w.proj_out(w.norm_out(h.float()) * (1 + sc) + sh)
        h = h.reshape(b, f, hh, ww, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return h.flatten(6, 7).flatten(4, 5).flatten(2, 3)
