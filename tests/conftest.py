"""Tests run in float64 with rank promotion raising, as strict as the library can bear."""

import gc
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
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


# Every compiled program keeps its own memory mappings (XLA's CPU code), and the kernel
# allows a process 65530 (vm.max_map_count): test_lyapunov.py alone leaves 36682. Past
# the limit an xdist worker dies inside XLA (a segfault or an abort while compiling or
# serialising, in whichever test comes next). So once a process holds many mappings,
# the compiled programs are dropped after the test (recompiled when needed again).
_MAPPINGS = "/proc/self/maps"
_MAPPINGS_LIMIT = 20000


def _mappings() -> int:
    try:
        with open(_MAPPINGS, "rb") as f:
            return sum(1 for _ in f)
    except OSError:        # not Linux: nothing to watch
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    yield
    if _mappings() > _MAPPINGS_LIMIT:
        jax.clear_caches()
        gc.collect()
