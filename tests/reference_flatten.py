"""An independent, literal reading of the released FLatten models (FLATTEN.md), for parity tests.

Written straight from the equations, on a plain state dict, without importing flatten_dense: if
the package and this file agree, the package computes what the authors' models compute at 224.
It also builds test checkpoints with exactly the released key names and shapes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

# Copies of the released models' key lists (name<TAB>shape per entry), kept in the repository so
# the tests need nothing beside it.
KEY_LISTS = Path(__file__).resolve().parent / "data" / "official_checkpoint_keys"

# Windows from FLATTEN.md: linear 56 and softmax 7 at 224; linear 96 and softmax 12 for Swin-B at 384.
SWIN = {
    "flatten_swin_t": {"depths": (2, 2, 6, 2), "heads": (3, 6, 12, 24), "windows": (56, 7)},
    "flatten_swin_s": {"depths": (2, 2, 18, 2), "heads": (3, 6, 12, 24), "windows": (56, 7)},
    "flatten_swin_b": {"depths": (2, 2, 18, 2), "heads": (4, 8, 16, 32), "windows": (56, 7)},
    "flatten_swin_b_384": {"depths": (2, 2, 18, 2), "heads": (4, 8, 16, 32), "windows": (96, 12)},
}
# CSWin heads per stage and the softmax stripe width of stage 3 (FLATTEN.md, "FLatten-CSWin").
CSWIN = {
    "flatten_cswin_t": {"heads": (2, 4, 8, 16), "stripe": 7},
    "flatten_cswin_s": {"heads": (2, 4, 8, 16), "stripe": 7},
    "flatten_cswin_b": {"heads": (4, 8, 16, 32), "stripe": 7},
}
# The training size each released model computes at (its logits are only defined there).
IMAGE_SIZE = {"flatten_swin_b_384": 384}
PVT_HEADS = (1, 2, 5, 8)


def key_list(name: str) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(parameter count from the header, {key: shape}) of a released model's key list file."""
    lines = (KEY_LISTS / f"{name}.txt").read_text().splitlines()
    count = int(re.search(r"(\d+) parameters", lines[0]).group(1))
    shapes = {}
    for line in lines[1:]:
        key, shape = line.split("\t")
        shapes[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return count, shapes


# ---------------------------------------------------------------- test checkpoints
def official_relative_index(window: int) -> Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def official_shift_mask(resolution: int, window: int, shift: int) -> Tensor:
    img = torch.zeros(1, resolution, resolution, 1)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    windows = partition(img, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def make_release_checkpoint(name: str, path: Path, seed: int = 0) -> dict[str, Tensor]:
    """Write a checkpoint in the release format with every listed key, random but sane values."""
    generator = torch.Generator().manual_seed(seed)
    _, shapes = key_list(name)
    state = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "relative_position_index":
            state[key] = official_relative_index(math.isqrt(shape[0]))
        elif leaf == "attn_mask":
            window = math.isqrt(shape[1])
            resolution = window * math.isqrt(shape[0])
            state[key] = official_shift_mask(resolution, window, window // 2)
        elif ".norm" in f".{key}" and leaf == "weight" and len(shape) == 1:
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif leaf == "scale":
            state[key] = 0.5 * torch.randn(shape, generator=generator)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=generator)
    torch.save({"model": state, "epoch": 299, "max_accuracy": 82.1, "config": "released config text"}, path)
    return state


# ---------------------------------------------------------------- shared maths
def layer_norm(x: Tensor, sd: dict, prefix: str, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def linear(x: Tensor, sd: dict, prefix: str) -> Tensor:
    return F.linear(x, sd[prefix + ".weight"], sd.get(prefix + ".bias"))


def focus(x: Tensor, p: float = 3.0) -> Tensor:
    norm = torch.sqrt((x * x).sum(-1, keepdim=True))
    xp = x**p
    return xp / torch.sqrt((xp * xp).sum(-1, keepdim=True)) * norm


def focused_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, sd: dict, prefix: str, heads: int, grid: tuple[int, int]
) -> Tensor:
    """Steps 2-6 of FLATTEN.md (no output projection) for tokens on a grid. q, k, v: (B, N, C)."""
    k = k + sd[prefix + ".positional_encoding"]
    s = torch.log1p(torch.exp(sd[prefix + ".scale"]))
    q = focus((torch.clamp(q, min=0) + 1e-6) / s)
    k = focus((torch.clamp(k, min=0) + 1e-6) / s)
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, n, heads, d).permute(0, 2, 1, 3) for t in (q, k, v))  # b h n d
    z = 1.0 / (torch.einsum("bhid,bhd->bhi", q, k.mean(dim=2)) + 1e-6)
    kv = torch.einsum("bhjc,bhjd->bhcd", k / math.sqrt(n), v / math.sqrt(n))
    out = torch.einsum("bhic,bhcd,bhi->bhid", q, kv, z)
    v_map = v.reshape(b * heads, grid[0], grid[1], d).permute(0, 3, 1, 2)
    weight = sd[prefix + ".dwc.weight"]
    dwc = F.conv2d(v_map, weight, sd[prefix + ".dwc.bias"], padding=weight.shape[-1] // 2, groups=d)
    out = out + dwc.permute(0, 2, 3, 1).reshape(b, heads, n, d)
    return out.permute(0, 2, 1, 3).reshape(b, n, c)


def mlp(x: Tensor, sd: dict, prefix: str, side: int | None = None) -> Tensor:
    h = linear(x, sd, prefix + ".fc1")
    if prefix + ".dwconv.dwconv.weight" in sd:
        b, n, c = h.shape
        grid = h.transpose(1, 2).reshape(b, c, side, side)
        grid = F.conv2d(
            grid, sd[prefix + ".dwconv.dwconv.weight"], sd[prefix + ".dwconv.dwconv.bias"], padding=1, groups=c
        )
        h = grid.flatten(2).transpose(1, 2)
    return linear(F.gelu(h), sd, prefix + ".fc2")


# ---------------------------------------------------------------- Swin
def partition(x: Tensor, w: int) -> Tensor:
    b, h, wd, c = x.shape
    return x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w, w, c)


def unpartition(windows: Tensor, w: int, h: int, wd: int) -> Tensor:
    b = windows.shape[0] // (h * wd // w // w)
    return windows.view(b, h // w, wd // w, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, -1)


def swin_forward(sd: dict, name: str, image: Tensor) -> Tensor:
    cfg = SWIN[name]
    x = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)
    b, c, res, _ = x.shape
    x = layer_norm(x.flatten(2).transpose(1, 2), sd, "patch_embed.norm", 1e-5)
    for i, depth in enumerate(cfg["depths"]):
        heads = cfg["heads"][i]
        linear_stage = i < 2
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            window = cfg["windows"][0] if linear_stage else cfg["windows"][1]
            shift = 0 if j % 2 == 0 else window // 2
            if res <= window:
                window, shift = res, 0
            c = x.shape[-1]
            h = layer_norm(x, sd, p + ".norm1", 1e-5).view(b, res, res, c)
            if shift:
                h = torch.roll(h, (-shift, -shift), (1, 2))
            win = partition(h, window).view(-1, window * window, c)
            q, k, v = linear(win, sd, p + ".attn.qkv").reshape(win.shape[0], -1, 3, c).unbind(2)
            if linear_stage:
                out = focused_linear_attention(q, k, v, sd, p + ".attn", heads, (window, window))
                out = linear(out, sd, p + ".attn.proj")
            else:
                d = c // heads
                q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
                attn = (q * d**-0.5) @ k.transpose(-2, -1)
                table = sd[p + ".attn.relative_position_bias_table"]
                index = sd[p + ".attn.relative_position_index"]
                attn = attn + table[index.view(-1)].view(window**2, window**2, -1).permute(2, 0, 1)
                if shift:
                    mask = sd[p + ".attn_mask"]
                    nw = mask.shape[0]
                    attn = attn.view(-1, nw, heads, window**2, window**2) + mask[None, :, None]
                    attn = attn.view(-1, heads, window**2, window**2)
                out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, window**2, c)
                out = linear(out, sd, p + ".attn.proj")
            h = unpartition(out.view(-1, window, window, c), window, res, res)
            if shift:
                h = torch.roll(h, (shift, shift), (1, 2))
            x = x + h.reshape(b, res * res, c)
            x = x + mlp(layer_norm(x, sd, p + ".norm2", 1e-5), sd, p + ".mlp")
        if i < 3:
            g = x.view(b, res, res, -1)
            g = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1)
            res //= 2
            g = layer_norm(g.reshape(b, res * res, -1), sd, f"layers.{i}.downsample.norm", 1e-5)
            x = F.linear(g, sd[f"layers.{i}.downsample.reduction.weight"])
    x = layer_norm(x, sd, "norm", 1e-5).mean(1)
    return linear(x, sd, "head")


# ---------------------------------------------------------------- PVT v1 / v2
def pvt_forward(sd: dict, image: Tensor) -> Tensor:
    v2 = "pos_embed1" not in sd
    x = image
    for i in range(4):
        s = i + 1
        w = sd[f"patch_embed{s}.proj.weight"]
        kernel = w.shape[-1]
        stride = 4 if i == 0 else 2
        x = F.conv2d(x, w, sd[f"patch_embed{s}.proj.bias"], stride=stride, padding=kernel // 2 if v2 else 0)
        b, c, side, _ = x.shape
        x = layer_norm(x.flatten(2).transpose(1, 2), sd, f"patch_embed{s}.norm", 1e-5)
        if not v2:
            x = x + sd[f"pos_embed{s}"]
        j = 0
        while f"block{s}.{j}.norm1.weight" in sd:
            p = f"block{s}.{j}"
            h = layer_norm(x, sd, p + ".norm1", 1e-6)
            q = linear(h, sd, p + ".attn.q")
            k, v = linear(h, sd, p + ".attn.kv").reshape(b, -1, 2, c).unbind(2)
            out = focused_linear_attention(q, k, v, sd, p + ".attn", PVT_HEADS[i], (side, side))
            x = x + linear(out, sd, p + ".attn.proj")
            x = x + mlp(layer_norm(x, sd, p + ".norm2", 1e-6), sd, p + ".mlp", side)
            j += 1
        if v2:
            x = layer_norm(x, sd, f"norm{s}", 1e-6)
        if i < 3:
            x = x.transpose(1, 2).reshape(b, c, side, side)
    return linear(x.mean(1), sd, "head")


# ---------------------------------------------------------------- CSWin
def lepe(v: Tensor, sd: dict, prefix: str, grid: tuple[int, int]) -> Tensor:
    """LePE: the depthwise 3 x 3 conv `get_v` of v (B, N, C) on its stripe's grid."""
    b, n, c = v.shape
    v_map = v.transpose(1, 2).reshape(b, c, grid[0], grid[1])
    out = F.conv2d(v_map, sd[prefix + ".get_v.weight"], sd[prefix + ".get_v.bias"], padding=1, groups=c)
    return out.flatten(2).transpose(1, 2)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """softmax(q k^T / sqrt(d)) v per head, written out. q, k, v: (B, N, C) -> (B, N, C)."""
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, n, heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * d**-0.5
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    out = torch.einsum("bhij,bhjd->bhid", weights / weights.sum(-1, keepdim=True), v)
    return out.permute(0, 2, 1, 3).reshape(b, n, c)


def cswin_branch(q: Tensor, k: Tensor, v: Tensor, sd: dict, prefix: str, heads: int, branch: int, width: int) -> Tensor:
    """One branch on its channels, stripe by stripe: branch 0 vertical stripes of `width` columns,
    branch 1 horizontal stripes of `width` rows, -1 the whole map. q, k, v: (B, H, W, C_b)."""
    b, height, wd, c = q.shape
    out = torch.zeros_like(q)
    count = 1 if branch == -1 else (wd if branch == 0 else height) // width
    for s in range(count):
        rows, cols = slice(None), slice(None)
        if branch == 0:
            cols = slice(s * width, (s + 1) * width)
        elif branch == 1:
            rows = slice(s * width, (s + 1) * width)
        qs, ks, vs = (t[:, rows, cols] for t in (q, k, v))
        grid = (qs.shape[1], qs.shape[2])
        qs, ks, vs = (t.reshape(b, -1, c) for t in (qs, ks, vs))
        if prefix + ".positional_encoding" in sd:
            o = focused_linear_attention(qs, ks, vs, sd, prefix, heads, grid)
        else:
            o = softmax_attention(qs, ks, vs, heads)
        out[:, rows, cols] = (o + lepe(vs, sd, prefix, grid)).reshape(b, grid[0], grid[1], c)
    return out


def cswin_forward(sd: dict, name: str, image: Tensor) -> Tensor:
    cfg = CSWIN[name]
    x = F.conv2d(image, sd["stage1_conv_embed.0.weight"], sd["stage1_conv_embed.0.bias"], stride=4, padding=2)
    b, c, res, _ = x.shape
    x = layer_norm(x.flatten(2).transpose(1, 2), sd, "stage1_conv_embed.2", 1e-5)
    for i in range(4):
        if i > 0:
            g = x.transpose(1, 2).reshape(b, -1, res, res)
            g = F.conv2d(g, sd[f"merge{i}.conv.weight"], sd[f"merge{i}.conv.bias"], stride=2, padding=1)
            res = g.shape[-1]
            x = layer_norm(g.flatten(2).transpose(1, 2), sd, f"merge{i}.norm", 1e-5)
        j = 0
        while f"stage{i + 1}.{j}.qkv.weight" in sd:
            p = f"stage{i + 1}.{j}"
            c = x.shape[-1]
            q, k, v = linear(layer_norm(x, sd, p + ".norm1", 1e-5), sd, p + ".qkv").reshape(b, res, res, 3, c).unbind(3)
            two = p + ".attns.1.get_v.weight" in sd
            parts = []
            for branch in (0, 1) if two else (-1,):
                lo, hi = (0, c) if not two else (branch * c // 2, (branch + 1) * c // 2)
                prefix = f"{p}.attns.{max(branch, 0)}"
                width = cfg["stripe"] if prefix + ".positional_encoding" not in sd else res  # linear: global at 224
                heads = cfg["heads"][i] // (2 if two else 1)
                parts.append(
                    cswin_branch(q[..., lo:hi], k[..., lo:hi], v[..., lo:hi], sd, prefix, heads, branch, width)
                )
            x = x + linear(torch.cat(parts, -1).reshape(b, res * res, c), sd, p + ".proj")
            x = x + mlp(layer_norm(x, sd, p + ".norm2", 1e-5), sd, p + ".mlp")
            j += 1
    x = layer_norm(x, sd, "norm", 1e-5).mean(1)
    return linear(x, sd, "head")


def has_reference(name: str) -> bool:
    """flatten_cswin_b_384 has none: its released tables (56- and 28-wide linear stripes on the 96 and
    48 maps) do not tile the map it was trained on, so its computation is not stated."""
    return name in SWIN or name in CSWIN or name.startswith("flatten_pvt")


def reference_logits(name: str, state: dict[str, Tensor], image: Tensor) -> Tensor:
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    image = image.double()
    with torch.no_grad():
        if name in SWIN:
            return swin_forward(state, name, image).float()
        if name in CSWIN:
            return cswin_forward(state, name, image).float()
        return pvt_forward(state, image).float()
