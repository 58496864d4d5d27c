"""The ``gradpaths`` command line: ``explain``, ``sweep``, ``train`` and ``report``.

``gradpaths explain`` runs :func:`gradpaths.explain` on the built-in default (an
LSTM whose explosion comes through a non-carousel route) or on imported weights
and prints the table and verdict; ``--out DIR`` also writes a report folder.
``gradpaths sweep`` maps the growth of each route over recurrent gain and forget
bias; ``gradpaths train`` trains on a built-in task (synthetic, or real text) with or
without clipping; ``gradpaths report`` reads a records file (JSON lines of probes and
events from your own training loop, or from ``gradpaths train --records``) and writes
the same report as ``gradpaths train --out``.

One module per subcommand (``_explain``, ``_sweep``, ``_train``, ``_report``: its parser and its
``run``), the options and helpers they share in ``_common``, and :func:`main` in
``_main``. The command line only parses, checks what the library cannot (files,
combinations of options) and prints; names and defaults come from the library.

Bad input (a missing file, a wrong format, an unknown cell, a negative size: a usage
error or a :class:`gradpaths.InputError`) exits with status 2 and one line
``gradpaths <cmd>: error: ...``; any other exception is a bug and exits with status
70 and a request to report it (``--traceback`` or ``GRADPATHS_TRACEBACK=1`` shows the
traceback). The analysis runs in float64. Compiled code is cached in
``~/.cache/gradpaths/jax`` (``GRADPATHS_CACHE_DIR`` to move it,
``GRADPATHS_CACHE_DIR=off`` to turn it off), so a second run starts fast.
"""

from gradpaths._cli._main import main as main
