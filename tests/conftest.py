"""Test setup: two forced CPU devices, JAX's persistent compilation cache and the tuned host allocator.

All three must be set before JAX is imported anywhere, which is why they live here.
"""

import os
import pathlib

# Appended, not defaulted: XLA_FLAGS=--xla_cpu_max_isa=AVX2 (the other CPU kind's code) keeps the two devices.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from mos_jax.runtime import tune_host_allocator  # noqa: E402

tune_host_allocator()  # as the entry points do: fewer page faults, a faster suite

import jax  # noqa: E402
import pytest  # noqa: E402

_CACHE = os.environ.get("MOS_JAX_COMPILATION_CACHE", str(pathlib.Path.home() / ".cache" / "mos_jax" / "jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real datasets beside the checkout (../shared/data); tests that need them skip without it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data not found at {SHARED_DATA} (expected ../shared/data beside the checkout)")
  return SHARED_DATA
