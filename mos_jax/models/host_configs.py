"""Per-host settings of the encoders (SASRec, GRU4Rec, DIN, TransAct, SDIM, TWIN, Mamba4Rec); docs/model.md.

Each dataclass is nested into ``ModelConfig`` as one field named after its host (``cfg.din``, ``cfg.sdim``, ...), so
``--config.model.sdim.num_hashes=4`` works from the command line. They live here rather than beside their encoders
because the encoders import ``ModelConfig`` (an import cycle otherwise). Shared sizes (``embed_dim`` D, ``hidden_dim``
H, ``num_layers``, ``num_heads``, ``dropout``, ``dtype``) stay in ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses


def _bad(host: str, field: str, value, expected: str):
  raise ValueError(f"ModelConfig.{host}.{field}={value!r}: expected {expected}")


SASREC_NORMS = ("pre", "post")
SASREC_POSITIONS = ("recency", "oldest")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu")


@dataclasses.dataclass
class SASRecConfig:
  """SASRec encoder options (encoders/sasrec.py). The defaults are this project's encoder; docs/protocol.md gives the
  values that reproduce RecBole's SASRec (configs/ml100k_sasrec.py sets them)."""

  norm: str = "pre"  # pre: x + f(LN(x)) | post: LN(x + f(x)) (BERT / RecBole)
  input_norm: bool = False  # LayerNorm on item + position embedding, before the input dropout (RecBole)
  final_norm: bool = True  # LayerNorm after the last block (pre-LN needs one; RecBole's post-LN stack has none)
  out_proj: bool = True  # Linear D -> H on the output; False needs hidden_dim == embed_dim (RecBole: none)
  positions: str = "recency"  # recency: 0 = most recent valid item | oldest: 0 = oldest valid item kept (RecBole)
  activation: str = "gelu_tanh"  # feed-forward: gelu_tanh (jax.nn.gelu default) | gelu (exact, erf) | relu
  layer_norm_eps: float = 1e-6  # Flax's default; RecBole 1e-12
  init_std: float = 0.0  # 0: Flax defaults; > 0: normal(std) Linear kernels and position table, zero biases
  attn_dropout: float = 0.0  # dropout on the attention probabilities (RecBole attn_dropout_prob)

  def validate(self, embed_dim: int, hidden_dim: int) -> "SASRecConfig":
    """Raises ValueError naming the offending field; returns self."""

    def bad(field, value, expected):
      raise ValueError(f"ModelConfig.sasrec.{field}={value!r}: expected {expected}")

    for field, allowed in (("norm", SASREC_NORMS), ("positions", SASREC_POSITIONS), ("activation", ACTIVATIONS)):
      if getattr(self, field) not in allowed:
        bad(field, getattr(self, field), f"one of {allowed}")
    if not self.out_proj and hidden_dim != embed_dim:
      bad("out_proj", False, f"True unless hidden_dim ({hidden_dim}) == embed_dim ({embed_dim})")
    if self.layer_norm_eps <= 0:
      bad("layer_norm_eps", self.layer_norm_eps, "> 0")
    if self.init_std < 0:
      bad("init_std", self.init_std, ">= 0 (0 = Flax default initialisers)")
    if not 0.0 <= self.attn_dropout < 1.0:
      bad("attn_dropout", self.attn_dropout, "in [0, 1)")
    return self


GRU_INITS = ("flax", "xavier")


@dataclasses.dataclass
class GRU4RecConfig:
  """GRU4Rec encoder options (encoders/gru4rec.py); RecBole's GRU4Rec is bias=False, init='xavier'."""

  bias: bool = True  # biases in the GRU gates (PyTorch's nn.GRU(bias=False) has none)
  init: str = "flax"  # flax: lecun-normal kernels | xavier: xavier-uniform kernels (RecBole)

  def validate(self) -> "GRU4RecConfig":
    """Raises ValueError naming the offending field; returns self."""
    if self.init not in GRU_INITS:
      raise ValueError(f"ModelConfig.gru4rec.init={self.init!r}: expected one of {GRU_INITS}")
    return self


@dataclasses.dataclass
class DINConfig:
  """DIN (Zhou et al., KDD'18): an activation-unit MLP scores each behaviour against the target."""

  attention_units: tuple[int, ...] = (64,)  # hidden widths of the activation unit (FuxiCTR DIN default [64])
  use_softmax: bool = False  # DIN: raw (unnormalised) weights; True: masked softmax over the valid positions

  def validate(self) -> "DINConfig":
    if not self.attention_units or any(u < 1 for u in self.attention_units):
      _bad("din", "attention_units", self.attention_units, "a non-empty tuple of integers >= 1")
    return self


@dataclasses.dataclass
class TransActConfig:
  """TransAct (Xia et al., KDD'23) with FuxiCTR's defaults; layers / heads come from ModelConfig."""

  ffn_dim: int = 512  # feed-forward width of the post-LN transformer (FuxiCTR 512)
  last_k: int = 1  # k most recent valid outputs in the representation (FuxiCTR 1, Pinterest 10)
  max_pool: bool = True  # add Linear(max-pool over valid outputs)
  early_fusion: bool = True  # concat the target on every step (d_model = 2D); zeros in next-item mode

  def validate(self) -> "TransActConfig":
    if self.ffn_dim < 1:
      _bad("transact", "ffn_dim", self.ffn_dim, "an integer >= 1")
    if self.last_k < 0 or (self.last_k == 0 and not self.max_pool):
      _bad("transact", "last_k", self.last_k, "an integer >= 0, and >= 1 when max_pool is False")
    return self


@dataclasses.dataclass
class SDIMConfig:
  """SDIM (Cao et al., CIKM'22): SimHash long-term interest + short-term target attention (FuxiCTR config)."""

  num_hashes: int = 2  # m: independent hash functions
  hash_bits: int = 4  # tau: bits per hash (2**tau buckets)
  l2_norm: bool = False  # L2-normalise each hash's collision sum before the mean over hashes
  short_seq_len: int = 50  # s: most recent valid items seen by the short-term attention
  attention_dim: int = 64  # A: width of the short-term target attention
  num_heads: int = 2

  def validate(self) -> "SDIMConfig":
    for field in ("num_hashes", "short_seq_len", "attention_dim", "num_heads"):
      if getattr(self, field) < 1:
        _bad("sdim", field, getattr(self, field), "an integer >= 1")
    if not 1 <= self.hash_bits <= 30:
      _bad("sdim", "hash_bits", self.hash_bits, "an integer in [1, 30] (bucket codes are int32)")
    if self.attention_dim % self.num_heads:
      _bad("sdim", "num_heads", self.num_heads, f"a divisor of attention_dim={self.attention_dim}")
    return self


@dataclasses.dataclass
class TWINConfig:
  """TWIN (Chang et al., KDD'23): one target-attention relevance picks and weights the top-k behaviours."""

  topk: int = 50  # behaviours kept by the GSU (min(topk, L) at run time)
  shared_topk: bool = False  # False: per-head top-k (FuxiCTR); True: one set by the head-summed score (paper's GSU)
  short_seq_len: int = 50  # most recent valid items seen by the short-term attention
  attention_dim: int = 64
  num_heads: int = 2

  def validate(self) -> "TWINConfig":
    for field in ("topk", "short_seq_len", "attention_dim", "num_heads"):
      if getattr(self, field) < 1:
        _bad("twin", field, getattr(self, field), "an integer >= 1")
    if self.attention_dim % self.num_heads:
      _bad("twin", "num_heads", self.num_heads, f"a divisor of attention_dim={self.attention_dim}")
    return self


@dataclasses.dataclass
class Mamba4RecConfig:
  """Mamba4Rec (Liu et al., 2024) with its config.yaml defaults; layers / dropout come from ModelConfig."""

  d_state: int = 32  # N_st: SSM state size per channel
  d_conv: int = 4  # depthwise causal conv kernel
  expand: int = 2  # E = expand * D
  init: str = "mamba4rec"  # mamba4rec: every Linear N(0, 0.02), dt bias 0 | mamba_ssm: the Mamba block's own init
  scan_impl: str = "scan"  # scan (lax.scan, linear) | associative (lax.associative_scan)
  # scan only: rematerialise the scan in chunks of this many steps (0 = off), so the backward pass keeps O(L/c + c)
  # steps of [N, E, Nst] residuals instead of O(L); same outputs and gradients, one more forward scan (selective_scan.py)
  scan_chunk: int = 0

  def validate(self) -> "Mamba4RecConfig":
    for field in ("d_state", "d_conv", "expand"):
      if getattr(self, field) < 1:
        _bad("mamba4rec", field, getattr(self, field), "an integer >= 1")
    if self.init not in ("mamba4rec", "mamba_ssm"):
      _bad("mamba4rec", "init", self.init, "one of ('mamba4rec', 'mamba_ssm')")
    if self.scan_impl not in ("scan", "associative"):
      _bad("mamba4rec", "scan_impl", self.scan_impl, "one of ('scan', 'associative')")
    if self.scan_chunk < 0:
      _bad("mamba4rec", "scan_chunk", self.scan_chunk, "0 (off) or a positive number of steps")
    return self


__all__ = ["DINConfig", "GRU4RecConfig", "Mamba4RecConfig", "SASRecConfig", "SDIMConfig", "TWINConfig",
           "TransActConfig"]
