"""Worker process of the torch.func baseline of ``jacobians.py`` (imports torch, not jax).

``python _torch_lstm.py IN.npz OUT.npz`` reads an LSTM's parameters (``W_g, R_g,
b_g`` for g in z, i, f, o), the states entering each step (``c, h``: (T, n)),
the inputs ``xs`` (T, m) and options; it times
``torch.func.vmap(torch.func.jacrev(step))`` over the T steps (first call apart,
then the median of repeats) and writes the times, the Jacobians at the sampled
steps ``idx`` (for the correctness check in the parent) and its own peak RSS
(``VmHWM``).

The step is the maths of ``gp.LSTM`` without peepholes (Greff et al. 2017)::

    z = tanh(W_z x + R_z h + b_z),  i = sigma(W_i x + R_i h + b_i),
    f = sigma(W_f x + R_f h + b_f), c' = z * i + c * f,
    o = sigma(W_o x + R_o h + b_o), h' = tanh(c') * o,   s = [c; h].
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch


def main(in_path: str, out_path: str) -> None:
    data = np.load(in_path)
    opts = json.loads(str(data["opts"]))
    torch.set_num_threads(int(opts["threads"]))
    t = {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files if k != "opts"}
    n = t["c"].shape[1]
    W = [t[f"W_{g}"] for g in "zifo"]
    R = [t[f"R_{g}"] for g in "zifo"]
    b = [t[f"b_{g}"] for g in "zifo"]

    def step(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        c, h = s[:n], s[n:]
        z = torch.tanh(W[0] @ x + R[0] @ h + b[0])
        i = torch.sigmoid(W[1] @ x + R[1] @ h + b[1])
        f = torch.sigmoid(W[2] @ x + R[2] @ h + b[2])
        c_new = z * i + c * f
        o = torch.sigmoid(W[3] @ x + R[3] @ h + b[3])
        return torch.cat([c_new, torch.tanh(c_new) * o])

    jac = torch.func.vmap(torch.func.jacrev(step), chunk_size=opts["chunk_size"])
    states = torch.cat([t["c"], t["h"]], dim=1)
    xs = t["xs"]

    t0 = time.perf_counter()
    out = jac(states, xs)
    first_s = time.perf_counter() - t0
    samples = out[torch.from_numpy(data["idx"])].numpy().copy()
    del out

    repeats = int(opts["repeats"]) or int(min(9, max(3, opts["budget_s"] // max(first_s, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jac(states, xs)
        times.append(time.perf_counter() - t0)
        del out
    np.savez(
        out_path,
        first_s=first_s,
        times=np.asarray(times),
        samples=samples,
        threads=torch.get_num_threads(),
        peak_rss=peak_rss(),
    )


def peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` (``ru_maxrss`` would include the peak
    of the parent this worker was spawned from; see ``_common.self_peak_rss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
