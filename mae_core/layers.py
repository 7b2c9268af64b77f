"""Transformer building blocks shared by the MAE encoder, the MAE decoder and the detection /
segmentation backbone. One Block class serves all three, so an MAE checkpoint's
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}` load into the backbone unchanged."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, gen_relative_position_index
from torch import nn


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(q_size, k_size, C) embeddings of the relative offsets between query and key positions.
    A table trained for another length is linearly resampled (ViTDet / SAM convention)."""
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(rel_pos.T.unsqueeze(0), size=max_dist, mode="linear").squeeze(0).T
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


def resize_bias_table(
    table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], extra: int
) -> torch.Tensor:
    """A BEiT bias table ((2h-1)(2w-1) + extra, heads) for `old_grid` resampled to `new_grid`:
    bicubic over the plane of 2-D offsets; the `extra` cls entries at the end are kept."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    old = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    new = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    heads = table.shape[1]
    body, cls_entries = table[: old[0] * old[1]], table[old[0] * old[1]:]
    plane = body.T.reshape(1, heads, *old).float()
    body = F.interpolate(plane, size=new, mode="bicubic", align_corners=False).reshape(heads, -1).T
    return torch.cat([body.to(table.dtype), cls_entries])


@functools.lru_cache(maxsize=8)
def bias_index(grid: tuple[int, int], cls_token: bool, device: torch.device) -> torch.Tensor:
    """BEiT's (N, N) index into the bias table (timm's `gen_relative_position_index`), cached so
    that all blocks share one (8 MB at 32x32 tokens; 130 MB at 64x64, which a copy per block,
    as MMSegmentation keeps, would multiply by the depth). Never an inference tensor, so a first
    call under `torch.inference_mode` does not break later training."""
    with torch.inference_mode(False):
        return gen_relative_position_index(grid, class_token=cls_token, device=device)


class RelPosBias(nn.Module):
    """BEiT's relative position bias, as MMSegmentation's `BEiT` and `MAE` backbones use it: one
    learned scalar per head for every 2-D offset between two patches, and with a cls token three
    more (cls to patch, patch to cls, cls to itself), indexed as BEiT does (timm's
    `gen_relative_position_index`), so their tables load unchanged. Zero at start, as MAE's
    fine-tuning initialises it. For another grid the table is resampled (`resize_bias_table`)."""

    def __init__(self, grid: tuple[int, int], num_heads: int, cls_token: bool):
        super().__init__()
        self.grid = tuple(grid)
        self.cls_token = cls_token
        self.extra = 3 if cls_token else 0
        entries = (2 * grid[0] - 1) * (2 * grid[1] - 1) + self.extra
        self.relative_position_bias_table = nn.Parameter(torch.zeros(entries, num_heads))

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """(heads, N, N) additive attention bias for the tokens of a `grid` (cls first if any)."""
        grid = tuple(grid)
        table = resize_bias_table(self.relative_position_bias_table, self.grid, grid, self.extra)
        return _GatherBiasTable.apply(table, grid, self.cls_token)


def _offset_sums(m: torch.Tensor) -> torch.Tensor:
    """(..., n, n) -> (..., 2n - 1): entry n - 1 + i - i' sums m[..., i, i'] over each diagonal.
    The columns are reversed (so a diagonal becomes i + k = const), zero-padded to 2n - 1, and read
    with a row stride one short of the padded row (row i shifted right by i): each anti-diagonal
    lands in one column, and the shifted rows' overflow reads only padding."""
    n = m.shape[-1]
    padded = m.new_zeros(*m.shape[:-1], 2 * n - 1)  # contiguous, which the strides below assume
    padded[..., :n] = m.flip(-1)
    skewed = padded.as_strided((*padded.shape[:-2], n, 2 * n - 1), (*padded.stride()[:-2], 2 * n - 2, 1))
    return skewed.sum(-2)


class _GatherBiasTable(torch.autograd.Function):
    """table[bias_index(grid, cls_token)].permute(2, 0, 1), the (heads, N, N) bias, gathered
    straight into that layout (index_select on the transposed table: no permuted copy later); its
    backward sums the gradient over the diagonals of each 2-D offset (`_offset_sums`) instead of
    scattering N * N entries per head into the table: faster both ways than autograd's gather and
    scatter (docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, grid: tuple[int, int], cls_token: bool) -> torch.Tensor:
        ctx.grid, ctx.cls_token, ctx.entries = grid, cls_token, table.shape[0]
        n = grid[0] * grid[1] + cls_token
        index = bias_index(grid, cls_token, table.device).view(-1)
        return table.t().index_select(1, index).view(table.shape[1], n, n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (gh, gw), heads = ctx.grid, grad.shape[0]
        patches = grad[:, 1:, 1:] if ctx.cls_token else grad
        g = patches.reshape(heads, gh, gw, gh, gw).permute(0, 1, 3, 2, 4)  # (h, i, i', j, j')
        by_col_offset = _offset_sums(g)  # (h, i, i', 2gw-1)
        by_offset = _offset_sums(by_col_offset.permute(0, 3, 1, 2))  # (h, 2gw-1, 2gh-1)
        grad_table = grad.new_empty(ctx.entries, heads)
        grad_table[: (2 * gh - 1) * (2 * gw - 1)] = by_offset.permute(2, 1, 0).reshape(-1, heads)
        if ctx.cls_token:
            grad_table[-3] = grad[:, 0, 1:].sum(-1)
            grad_table[-2] = grad[:, 1:, 0].sum(-1)
            grad_table[-1] = grad[:, 0, 0]
        return grad_table, None, None


# Which way `Attention` computes decomposed relative positions (ViTDet):
#   "fused": scaled_dot_product_attention with the rel-pos terms folded into q and k (head size
#       c -> c + gh + gw): never forms an (N x N) matrix, fastest where fused kernels run near matrix
#       speed (CUDA). On a CPU the kernel pays the wider head in both products: 3x the FLOPs at
#       4096 tokens (64 -> 192).
#   "chunked": `chunked_rel_pos_attention`, explicit q.k^T + bias, softmax, @ v in query chunks at
#       the head size c, recomputed in backward: plain matrix products as Detectron2 runs them, with
#       memory bounded by the chunk instead of Detectron2's (heads x N x N) matrices per block.
#   "auto": `choose_rel_pos_path(device type, tokens, head size)`.
REL_POS_PATHS = ("auto", "fused", "chunked")
# Query rows per chunk are chosen so one chunk's (batch x heads x rows x N) scores hold about this
# many elements (512 MB in fp32; ViT-B at 1024 px: 2 chunks of the 12 x 4096 x 4096 scores): a few
# large chunks run a global block faster than many small ones, and faster than the fused path on a
# CPU (docs/benchmarks.md); the backward holds about three chunk-sized buffers at a time.
CHUNK_ELEMENTS = 2**27


def choose_rel_pos_path(device_type: str, tokens: int, head_dim: int) -> str:
    """The faster decomposed rel-pos path for attention over `tokens` tokens (a square-ish grid of
    side sqrt(tokens)) at `head_dim`. Not CPU -> "fused": CUDA's flash / memory-efficient kernels run
    near matrix speed, so the wider head costs little. CPU -> "chunked" once the fused head would be
    more than 2.5x wider (head_dim + 2 sqrt(tokens) > 2.5 head_dim): the CPU flash kernel pays the
    width in both of its products. The 2.5x threshold sits between ViT-B's global blocks at 1024 px
    (3x wider: chunked faster) and those at 512 px and its windows (2x and 1.4x: fused as fast or
    faster), timed per block forward+backward (docs/benchmarks.md, "The attention path, chosen by
    size and device")."""
    if device_type != "cpu":
        return "fused"
    return "chunked" if 2 * tokens**0.5 > 1.5 * head_dim else "fused"


def set_rel_pos_path(module: nn.Module, path: str) -> None:
    """Override the decomposed rel-pos attention path of every `Attention` in `module` ("auto" to
    choose per call again); e.g. `set_rel_pos_path(backbone, "fused")` to compare the two."""
    if path not in REL_POS_PATHS:
        raise ValueError(f"rel-pos attention path {path!r} is not one of {REL_POS_PATHS}")
    for m in module.modules():
        if isinstance(m, Attention):
            m.rel_pos_path = path


def _chunk_probs(
    q: torch.Tensor, k_t: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale + rel_h[row] + rel_w[col]) for one query chunk, at least in fp32:
    q (B, c, d) with rel_h (B, c, gh) and rel_w (B, c, gw); k_t (B, d, N) with N = gh * gw keys."""
    b, rows, gh = rel_h.shape
    scores = torch.bmm(q * scale, k_t)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    grid_view = scores.view(b, rows, gh, -1)
    grid_view.add_(rel_h.unsqueeze(-1)).add_(rel_w.unsqueeze(-2))
    return torch.softmax(scores, dim=-1)


class _ChunkedRelPosAttention(torch.autograd.Function):
    """softmax(q k^T * scale + rel_h[i'] + rel_w[j']) v over (B, N, d) inputs (batch and heads
    merged), in query chunks; backward recomputes each chunk's probabilities (flash attention's
    trade), so only the inputs and the output are kept between forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale: float, chunk: int):
        with torch.autocast(q.device.type, enabled=False):
            k_t = k.transpose(1, 2)
            out = torch.empty_like(q)
            for s in range(0, q.shape[1], chunk):
                rows = slice(s, s + chunk)
                probs = _chunk_probs(q[:, rows], k_t, rel_h[:, rows], rel_w[:, rows], scale)
                torch.bmm(probs.to(v.dtype), v, out=out[:, rows])
        ctx.save_for_backward(q, k, v, rel_h, rel_w, out)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel_h, rel_w, out = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        with torch.autocast(q.device.type, enabled=False):
            grad_out = grad_out.contiguous()
            acc = torch.promote_types(q.dtype, torch.float32)  # sums over chunks, softmax backward
            # softmax backward: dS = P * (dP - rowsum(dO * O)), the row sums once for all chunks.
            row_dot = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)
            k_t, v_t = k.transpose(1, 2), v.transpose(1, 2)
            grad_q = torch.empty_like(q)
            grad_k = torch.zeros(k.shape, dtype=acc, device=k.device)
            grad_v = torch.zeros(v.shape, dtype=acc, device=v.device)
            grad_h, grad_w = torch.empty_like(rel_h), torch.empty_like(rel_w)
            b, _, gh = rel_h.shape
            for s in range(0, q.shape[1], chunk):
                rows = slice(s, s + chunk)
                q_c, g_c = q[:, rows], grad_out[:, rows]
                probs = _chunk_probs(q_c, k_t, rel_h[:, rows], rel_w[:, rows], scale)
                grad_v.add_(torch.bmm(probs.to(v.dtype).transpose(1, 2), g_c))
                grad_s = probs.mul_(torch.bmm(g_c, v_t).to(acc).sub_(row_dot[:, rows]))
                grid_view = grad_s.view(b, grad_s.shape[1], gh, -1)
                grad_h[:, rows] = grid_view.sum(-1)
                grad_w[:, rows] = grid_view.sum(-2)
                grad_s = grad_s.to(q.dtype)
                torch.bmm(grad_s, k, out=grad_q[:, rows]).mul_(scale)
                grad_k.add_(torch.bmm(grad_s.transpose(1, 2), q_c * scale))
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), grad_h, grad_w, None, None


def chunked_rel_pos_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
    scale: float, chunk: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for (B, heads, N, d) q, k, v, where the bias of key (i', j')
    for each query is rel_h[..., i'] + rel_w[..., j'] (rel_h (B, heads, N, gh), rel_w (B, heads, N, gw),
    keys in row-major grid order). Memory: inputs and output plus a few (B * heads x chunk x N)
    buffers; `chunk` query rows at a time (default: about `CHUNK_ELEMENTS` scores per chunk)."""
    b, h, n, d = q.shape
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // (b * h * n))
    merged = [t.reshape(b * h, n, -1).contiguous() for t in (q, k, v)]
    rel = [t.reshape(b * h, n, -1).to(q.dtype).contiguous() for t in (rel_h, rel_w)]
    out = _ChunkedRelPosAttention.apply(*merged, *rel, scale, chunk)
    return out.view(b, h, n, d)


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`, with an optional
    relative position bias passed to it as an additive mask: decomposed (ViTDet, `rel_pos_size`)
    or BEiT's table (`rel_pos_bias_size`, with cls entries when `cls_token`)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rel_pos_size: tuple[int, int] | None = None,
        rel_pos_bias_size: tuple[int, int] | None = None,
        cls_token: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        if rel_pos_size is not None and rel_pos_bias_size is not None:
            raise ValueError("choose one relative position scheme: decomposed (ViTDet) or BEiT's table")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = rel_pos_size is not None
        if self.use_rel_pos:
            # Zero at start, so a checkpoint without relative positions behaves exactly as before.
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dim))
        # Which way decomposed relative positions are computed (REL_POS_PATHS; `set_rel_pos_path`).
        self.rel_pos_path = "auto"
        self.rel_pos_bias = RelPosBias(rel_pos_bias_size, num_heads, cls_token) if rel_pos_bias_size else None

    def rel_pos_terms(self, q: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decomposed relative position (ViTDet) from the unscaled queries: for the query at grid
        cell (i, j), <q, R_h[i - i']> for every key row i' (B, heads, N, gh) and <q, R_w[j - j']>
        for every key column j' (B, heads, N, gw). The bias of key (i', j') is their sum."""
        gh, gw = grid
        b, h, n, c = q.shape
        table_h = relative_position_table(gh, gh, self.rel_pos_h).to(q.dtype)
        table_w = relative_position_table(gw, gw, self.rel_pos_w).to(q.dtype)
        r_q = q.reshape(b, h, gh, gw, c)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, table_h).reshape(b, h, n, gh)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, table_w).reshape(b, h, n, gw)
        return rel_h, rel_w

    def attend_with_rel_pos(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """softmax(q.k / s + bias) v without ever forming the (N x N) bias or its gradient, by the
        path `rel_pos_path` names ("auto": `choose_rel_pos_path`). "chunked": see
        `chunked_rel_pos_attention`. "fused", below:

        The bias of key (i', j') is rel_h[i'] + rel_w[j'], a dot product with the key's one-hot
        row and column codes, so it rides inside the fused kernel's q.k product:
        q' = [q, s*rel_h, s*rel_w], k' = [k, onehot(row), onehot(col)], scale 1/s. At 1024 px
        (4096 tokens) this keeps global blocks at flash-attention memory instead of several
        0.8 GB tensors per block. v is zero-padded (fused kernels want one head size), and all
        three to a multiple of 8 (CUDA kernels' alignment)."""
        gh, gw = grid
        b, h, n, c = q.shape
        rel_h, rel_w = self.rel_pos_terms(q, grid)
        scale = c**-0.5
        path = self.rel_pos_path
        if path == "auto":
            path = choose_rel_pos_path(q.device.type, n, c)
        if path == "chunked":
            return chunked_rel_pos_attention(q, k, v, rel_h, rel_w, scale)
        rows = torch.arange(gh, device=q.device).repeat_interleave(gw)
        cols = torch.arange(gw, device=q.device).repeat(gh)
        codes = torch.cat([F.one_hot(rows, gh), F.one_hot(cols, gw)], dim=-1).to(q.dtype)
        width = c + gh + gw
        pad = -width % 8
        q = torch.cat([q, torch.cat([rel_h, rel_w], dim=-1) / scale], dim=-1)
        k = torch.cat([k, codes.expand(b, h, n, gh + gw)], dim=-1)
        if pad:
            q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        v = F.pad(v, (0, width + pad - c))
        return F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :c]

    def attend(self, qkv: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, 3 * dim) projected tokens -> (B, N, dim) attention output before `proj`."""
        b, n, three_dim = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if (self.use_rel_pos or self.rel_pos_bias is not None) and grid is None:
            raise ValueError("relative position bias needs the token grid (gh, gw)")
        if self.use_rel_pos:
            x = self.attend_with_rel_pos(q, k, v, grid)
        elif self.rel_pos_bias is not None:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel_pos_bias(grid).to(q.dtype))
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(b, n, three_dim // 3)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, dim) tokens -> (B, N, dim); `grid` (gh, gw) is the tokens' layout, needed with
        relative positions (N = gh * gw, plus the cls token first with a BEiT table)."""
        return self.proj(self.attend(self.qkv(x), grid))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window * window, C), zero-padding H and W up to the window."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`, padding removed."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1).transpose(2, 3)
    return x.reshape(b, hp, wp, -1)[:, :h, :w]


class Block(nn.Module):
    """Pre-norm transformer block. Takes tokens (B, N, C), or a token map (B, H, W, C) when it
    attends within windows or uses relative positions, which both need the 2-D layout. Tokens
    with a BEiT bias table (cls token first) come with their `grid` instead. Returns the same
    shape.

    Args:
        dim: token width C.
        num_heads: attention heads; `dim` must divide by it.
        mlp_ratio: MLP hidden width over `dim`.
        qkv_bias: bias in the q, k, v projection.
        drop_path: stochastic-depth rate of both residual branches.
        norm_layer, act_layer: the norm (built with `dim`) and the MLP's activation.
        window_size: attend within windows of this many tokens a side (token maps only); 0: global.
        rel_pos_size: decomposed relative positions (ViTDet) for this (h, w) grid of queries.
        rel_pos_bias_size: BEiT's relative position bias table for this grid.
        cls_token: the BEiT table has cls entries (the tokens start with a cls token).
        init_values: layer-scale initial value; None: no layer scale.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        window_size: int = 0,
        rel_pos_size: tuple[int, int] | None = None,
        rel_pos_bias_size: tuple[int, int] | None = None,
        cls_token: bool = False,
        init_values: float | None = None,
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim, num_heads, qkv_bias=qkv_bias, rel_pos_size=rel_pos_size,
            rel_pos_bias_size=rel_pos_bias_size, cls_token=cls_token,
        )
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def _attend_map(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if not self.window_size:
            return self.attn(x.reshape(b, h * w, c), (h, w)).view(b, h, w, c)
        # The projections are per token, so they run on the real tokens only, not on the
        # zero padding that fills the last windows (at 512 px, 32x32 tokens become 42x42:
        # 72% more). A padded token's q, k, v are the qkv bias, as if projected from zeros.
        qkv = self.attn.qkv
        padded = h % self.window_size or w % self.window_size
        projected = F.linear(x, qkv.weight, None if padded else qkv.bias)
        windows, padded_size = window_partition(projected, self.window_size)
        if padded and qkv.bias is not None:
            windows = windows + qkv.bias
        out = self.attn.attend(windows, (self.window_size, self.window_size))
        return self.attn.proj(window_unpartition(out, self.window_size, padded_size, (h, w)))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.norm1(x)
        y = self._attend_map(y) if x.ndim == 4 else self.attn(y, grid)
        x = x + self.drop_path(self.ls1(y))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
