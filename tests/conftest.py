"""Tests run in float64 with rank promotion raising, as strict as the library can bear."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# One persistent compilation cache for the whole run: the test processes (both xdist
# workers, the notebooks' kernels, the CLI's and the benchmarks' subprocesses, which
# inherit the environment) compile many of the same programs. Keys hash the program,
# the devices and jax's version, so a stale entry is never reused.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"gradpaths-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
