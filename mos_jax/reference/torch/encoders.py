"""SASRec and GRU4Rec encoders in PyTorch, with the semantics of ``mos_jax.models.encoders`` (docs/model.md).

One interface, as in JAX: ``encoder(x[N,L,D], mask bool[N,L], target[N,D] | None) -> h[N,H]``; padding may sit
anywhere and never changes ``h``; an empty row gives a finite vector (0 before the output projection). Module and
parameter names mirror the NNX modules so that ``mos_jax.reference.names`` maps them one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mos_jax.models.config import ModelConfig

NEG = -1e9  # finite "minus infinity", as in JAX: rows with nothing to attend to stay finite

_ACTIVATIONS = {
  "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # jax.nn.gelu's default
  "gelu": F.gelu,
  "relu": F.relu,
}


def recency_positions(mask: torch.Tensor, max_len: int) -> torch.Tensor:
  """mask[N,L] -> int64[N,L]: number of valid positions after this one (clipped to max_len - 1)."""
  m = mask.long()
  after = torch.flip(torch.cumsum(torch.flip(m, [1]), 1), [1]) - m
  return after.clamp(0, max_len - 1)


def oldest_positions(mask: torch.Tensor, max_len: int) -> torch.Tensor:
  """mask[N,L] -> int64[N,L]: number of valid positions before this one (clipped to max_len - 1)."""
  m = mask.long()
  return (torch.cumsum(m, 1) - m).clamp(0, max_len - 1)


def last_index(mask: torch.Tensor) -> torch.Tensor:
  """mask[N,L] -> int64[N]: the last valid position of each row (0 for an empty row)."""
  idx = torch.arange(mask.shape[1], device=mask.device)
  return torch.where(mask, idx, 0).max(dim=1).values


def take_rows(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
  """h[N,L,...], index[N] -> h[n, index[n]]: [N,...]."""
  return h[torch.arange(h.shape[0], device=h.device), index]


class SASRecBlock(nn.Module):
  """Pre-LN ``x + MHA(LN(x)); x + FFN(LN(x))`` or post-LN ``LN(x + MHA(x)); LN(x + FFN(x))``; causal, valid keys."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    d, opt = cfg.embed_dim, cfg.sasrec
    self.num_heads = cfg.num_heads
    self.post_norm = opt.norm == "post"
    self.act = _ACTIVATIONS[opt.activation]
    self.norm1 = nn.LayerNorm(d, eps=opt.layer_norm_eps)
    self.qkv = nn.Linear(d, 3 * d)
    self.proj = nn.Linear(d, d)
    self.norm2 = nn.LayerNorm(d, eps=opt.layer_norm_eps)
    self.ff1 = nn.Linear(d, cfg.ffn_multiplier * d)
    self.ff2 = nn.Linear(cfg.ffn_multiplier * d, d)
    self.drop = nn.Dropout(cfg.dropout)
    self.attn_drop = nn.Dropout(opt.attn_dropout)

  def forward(self, x: torch.Tensor, mask: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
    """x[N,L,D] -> [N,L,D]; with ``last`` (int[N]) only each row's position last[n]: -> [N,D] (as in JAX: the
    encoder's last block needs every position's keys and values but the query, attention row, projection and
    feed-forward of one position)."""
    n, l, d = x.shape
    dh = d // self.num_heads
    h = x if self.post_norm else self.norm1(x)
    heads = lambda t: t.reshape(n, -1, self.num_heads, dh).transpose(1, 2)  # noqa: E731  [N,h,L,dh]
    if last is None:
      q, k, v = (heads(t) for t in self.qkv(h).chunk(3, dim=-1))
      allowed = torch.tril(torch.ones(l, l, dtype=torch.bool, device=x.device))[None] & mask[:, None, :]
    else:  # one query per row (the fused kernel's q rows), keys and values of all positions
      w, b = self.qkv.weight, self.qkv.bias
      q = heads(F.linear(take_rows(h, last), w[:d], b[:d])[:, None])
      k, v = (heads(t) for t in F.linear(h, w[d:], b[d:]).chunk(2, dim=-1))
      allowed, x = mask[:, None, :], take_rows(x, last)[:, None]  # every valid key precedes the last valid query
    scores = (q @ k.transpose(-1, -2)) * dh**-0.5  # [N,h,Lq,Lk]
    scores = scores.masked_fill(~allowed[:, None], NEG)
    probs = self.attn_drop(torch.softmax(scores, dim=-1))
    att = (probs @ v).transpose(1, 2).reshape(n, -1, d)
    x = x + self.drop(self.proj(att))
    if self.post_norm:
      x = self.norm1(x)
    y = self.drop(self.ff2(self.act(self.ff1(x if self.post_norm else self.norm2(x)))))
    out = self.norm2(x + y) if self.post_norm else x + y
    return out if last is None else out[:, 0]


class SASRec(nn.Module):
  """Learned positions by recency among valid items (or oldest first), blocks, final LN, output at the most recent
  valid item, projected D -> H. ``target`` is ignored."""

  def __init__(self, cfg: ModelConfig, *, max_len: int):
    super().__init__()
    d, opt = cfg.embed_dim, cfg.sasrec
    self.max_len = max_len
    self.out_dim = cfg.hidden_dim
    self.oldest_first = opt.positions == "oldest"
    self.pos = nn.Embedding(max_len, d)
    self.in_norm = nn.LayerNorm(d, eps=opt.layer_norm_eps) if opt.input_norm else None
    self.blocks = nn.ModuleList([SASRecBlock(cfg) for _ in range(cfg.num_layers)])
    self.norm = nn.LayerNorm(d, eps=opt.layer_norm_eps) if opt.final_norm else None
    self.out = nn.Linear(d, cfg.hidden_dim) if opt.out_proj else None
    self.drop = nn.Dropout(cfg.dropout)

  def forward(self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    del target
    mask = mask.bool()
    positions = (oldest_positions if self.oldest_first else recency_positions)(mask, self.max_len)
    h = x + self.pos(positions)
    if self.in_norm is not None:
      h = self.in_norm(h)
    h = self.drop(torch.where(mask[..., None], h, torch.zeros_like(h)))
    last = last_index(mask)
    for block in self.blocks[:-1]:
      h = block(h, mask)
    h = self.blocks[-1](h, mask, last)  # [N,D]: the last valid position's output
    if self.norm is not None:
      h = self.norm(h)
    h = torch.where(mask.any(dim=1, keepdim=True), h, torch.zeros_like(h))  # empty rows -> zeros
    return h if self.out is None else self.out(h)


class GRU4Rec(nn.Module):
  """A GRU cell over the valid items (padding steps keep the state); the last state is the output."""

  def __init__(self, cfg: ModelConfig, *, max_len: int):
    super().__init__()
    del max_len
    self.out_dim = cfg.hidden_dim
    self.cell = nn.GRUCell(cfg.embed_dim, cfg.hidden_dim, bias=cfg.gru4rec.bias)
    self.drop = nn.Dropout(cfg.dropout)

  def forward(self, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    del target
    x, mask = self.drop(x), mask.bool()
    h = x.new_zeros(x.shape[0], self.out_dim)
    for t in range(x.shape[1]):
      h = torch.where(mask[:, t, None], self.cell(x[:, t], h), h)
    return h


ENCODERS = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def build_encoder(cfg: ModelConfig, *, max_len: int) -> nn.Module:
  if cfg.backbone not in ENCODERS:
    raise ValueError(f"ModelConfig.backbone={cfg.backbone!r}: the PyTorch reference has only {tuple(ENCODERS)}")
  return ENCODERS[cfg.backbone](cfg, max_len=max_len)
