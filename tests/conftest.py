"""Test setup: two forced CPU devices, XLA:CPU's fast-compile options, JAX's persistent compilation cache and the
tuned host allocator.

All of them must be set before JAX is imported anywhere, which is why they live here.

Fast compile: compilation dominates the suite on 2 cores, and LLVM's -O0 without XLA:CPU's fusion emitters compiles
the tests' programs ~2.3x faster (tests/test_models_eval.py + tests/test_longseq.py, cold: 232 s -> 107 s). The HLO,
and so every function the tests check, is the same; only the machine code differs, which no test may depend on
(floats are compared with tolerances). ``MOS_JAX_TEST_FAST_COMPILE=0`` runs the suite with XLA's default options.
"""

import os
import pathlib


def _add_xla_flags(*flags: str) -> None:
  """Appends each flag whose name the caller's XLA_FLAGS (e.g. --xla_cpu_max_isa=AVX2) does not set already."""
  have = os.environ.get("XLA_FLAGS", "")
  new = [f for f in flags if f.split("=")[0] not in have]
  os.environ["XLA_FLAGS"] = " ".join([have] + new).strip()


os.environ.setdefault("JAX_PLATFORMS", "cpu")
_add_xla_flags("--xla_force_host_platform_device_count=2")
if os.environ["JAX_PLATFORMS"] == "cpu" and os.environ.get("MOS_JAX_TEST_FAST_COMPILE", "1") != "0":
  _add_xla_flags("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")

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
