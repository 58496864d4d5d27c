"""Tests run in float64 with rank promotion raising, as strict as the library can bear."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# No persistent compilation cache by default: with jaxlib 0.10.2 on CPU, writing an
# entry (``executable.serialize()``) segfaulted an xdist worker in two of two full runs
# on 2026-12-03 (different tests; each passes alone). GRADPATHS_TESTS_JAX_CACHE=1 turns
# one cache for the whole run back on (both workers, the notebooks' kernels, the CLI's
# and the benchmarks' subprocesses; keys hash the program, the devices and jax's
# version, so a stale entry is never reused): about 30% faster from a cold start.
if os.environ.get("GRADPATHS_TESTS_JAX_CACHE") == "1":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
        tempfile.gettempdir(), f"gradpaths-tests-jax-cache-{os.getuid()}"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
