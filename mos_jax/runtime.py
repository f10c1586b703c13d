"""Process setup of the entry points: the host allocator and JAX's persistent compilation cache.

Host allocator (XLA:CPU): stop glibc from returning memory to the kernel between steps.

XLA:CPU allocates each step's temporary buffers with ``malloc`` from its worker threads. glibc serves those from
per-thread arenas whose heaps are unmapped as soon as they are free again, so every step maps fresh pages and pays a
page fault per 4 KiB: for the default MoS run about 50,000 faults per train step, a third of the process's CPU time
in the kernel. One arena, no ``mmap`` for large blocks and no trimming keep the pages mapped and reused: the default
run's faults fall from 61 M to under 0.5 M, its kernel time from 115 s to 5-17 s, and with a warm compilation cache
its train step is 1.4x faster (docs/performance.md, "The default run on this machine"; there too: after an
in-process cold compile the steps are slower than after a cache load, a cause not found yet). The price is that the
process keeps its peak heap instead of giving memory back, which a training process does not need to do.

Called by the entry points (``start_jax``) before JAX starts its threads; ``MOS_JAX_MALLOC=default`` leaves glibc's
settings alone. A no-op where the C library is not glibc.

Compilation cache: ``MOS_JAX_COMPILATION_CACHE`` (default ``~/.cache/mos_jax/jax_cache``), so a second run of the
same model skips XLA compilation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
ENV = "MOS_JAX_MALLOC"
CACHE_ENV = "MOS_JAX_COMPILATION_CACHE"


def compilation_cache_dir() -> str:
  return os.environ.get(CACHE_ENV, os.path.expanduser("~/.cache/mos_jax/jax_cache"))


def tune_host_allocator() -> bool:
  """Applies the settings above (process-wide); True when they were applied."""
  setting = os.environ.get(ENV, "tuned")
  if setting not in ("tuned", "default"):
    raise ValueError(f"{ENV}={setting!r}: expected 'tuned' or 'default'")
  if setting == "default" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return False
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)


def start_jax():
  """Tunes the allocator, imports JAX and points it at the persistent compilation cache; returns the jax module."""
  tune_host_allocator()
  import jax  # noqa: PLC0415  (after the allocator settings: JAX starts its threads on first use)

  jax.config.update("jax_compilation_cache_dir", compilation_cache_dir())
  return jax
