"""The selective scan (S6) of Mamba, as in mamba_ssm's ``selective_scan_ref``, in float32.

    dA_t = exp(delta_t ⊗ A)            (zero-order hold for A)
    dBu_t = (delta_t * u_t) ⊗ B_t      (Euler for B, as mamba_ssm does)
    h_t = dA_t * h_{t-1} + dBu_t,  h_{-1} = 0
    y_t = <h_t, C_t> + D * u_t

``impl="scan"`` (default) runs a linear ``lax.scan`` with a carry ``[N,E,Nst]`` and never materialises
``[N,L,E,Nst]`` in the forward pass; ``impl="associative"`` uses ``lax.associative_scan`` (log depth, materialises
``[N,L,E,Nst]``; on a 2-core CPU 5x slower, see docs/model.md). With A < 0 and delta > 0, dA lies in (0, 1): products
only underflow towards 0. No matrix products (the reductions over Nst are element-wise), so count_flops adds none.

Memory of the backward pass: ``lax.scan`` keeps its per-step residuals (the carry and ``dA_t``, ``[N,E,Nst]`` each) for
all L steps, i.e. several ``[L,N,E,Nst]`` float32 arrays (2 GiB each at N = 256, L = 1024, E = 64, Nst = 32).
``chunk = c > 0`` runs the scan as L/c rematerialised chunks of c steps (``jax.checkpoint`` around each chunk's inner
scan): only the carry at chunk boundaries is kept, and the backward pass recomputes one chunk's forward at a time,
so the residuals shrink from O(L) to O(L/c + c) steps for one more forward scan. The forward values, and so the
outputs and gradients, are the same ops in the same order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def selective_scan(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, D: jax.Array, *,
                   impl: str = "scan", unroll: int = 1, chunk: int = 0) -> jax.Array:
  """u, delta [N,L,E] (delta > 0, after softplus); A [E,Nst]; B, C [N,L,Nst]; D [E] -> y [N,L,E] float32.

  ``chunk`` (``impl="scan"`` only): rematerialise the scan in chunks of this many steps (0 = off; module docstring).
  """
  f32 = jnp.float32
  u, delta, A, B, C, D = (a.astype(f32) for a in (u, delta, A, B, C, D))
  if impl == "scan":

    def step(h, inp):
      d_t, u_t, b_t, c_t = inp  # [N,E], [N,E], [N,Nst], [N,Nst]
      h = jnp.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * b_t[:, None, :]
      return h, jnp.sum(h * c_t[:, None, :], axis=-1)

    h0 = jnp.zeros(u.shape[:1] + A.shape, f32)
    ys = _chunked_scan(step, h0, tuple(jnp.swapaxes(a, 0, 1) for a in (delta, u, B, C)), unroll, chunk)
    y = jnp.swapaxes(ys, 0, 1)
  elif impl == "associative":
    a = jnp.exp(delta[..., None] * A)  # [N,L,E,Nst]
    b = (delta * u)[..., None] * B[:, :, None, :]

    def combine(left, right):  # (a_i, b_i) then (a_j, b_j): h -> a_j (a_i h + b_i) + b_j
      return right[0] * left[0], right[0] * left[1] + right[1]

    _, h = jax.lax.associative_scan(combine, (a, b), axis=1)
    y = jnp.sum(h * C[:, :, None, :], axis=-1)
  else:
    raise ValueError(f"selective_scan: impl={impl!r}: expected 'scan' or 'associative'")
  return y + D * u


def _chunked_scan(step, h0: jax.Array, xs: tuple[jax.Array, ...], unroll: int, chunk: int) -> jax.Array:
  """``lax.scan(step, h0, xs)[1]`` over the leading (time) axis, as rematerialised chunks when ``0 < chunk < L``."""
  if chunk < 0:
    raise ValueError(f"selective_scan: chunk={chunk}: expected 0 (off) or a positive number of steps")
  steps = xs[0].shape[0]
  if chunk == 0 or chunk >= steps:
    return jax.lax.scan(step, h0, xs, unroll=unroll)[1]
  # Padded steps have delta = 0, so dA = 1 and dBu = 0: the carry passes through them unchanged; their y is cut off.
  pad = -steps % chunk
  xs = tuple(jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape((-1, chunk) + a.shape[1:]) for a in xs)

  @functools.partial(jax.checkpoint, prevent_cse=False)  # inside a scan CSE cannot undo the remat
  def run_chunk(h, chunk_xs):
    return jax.lax.scan(step, h, chunk_xs, unroll=unroll)

  _, ys = jax.lax.scan(run_chunk, h0, xs)  # ys [L'/c, c, ...]
  return ys.reshape((-1,) + ys.shape[2:])[:steps]


def selective_scan_reference(u, delta, A, B, C, D) -> np.ndarray:
  """The same recurrence as a float64 numpy loop (tests only)."""
  u, delta, A, B, C, D = (np.asarray(a, np.float64) for a in (u, delta, A, B, C, D))
  n, l, e = u.shape
  y = np.zeros((n, l, e))
  h = np.zeros((n, e, A.shape[1]))
  for t in range(l):
    h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
    y[:, t] = np.einsum("nes,ns->ne", h, C[:, t]) + D * u[:, t]
  return y
