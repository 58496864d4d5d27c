"""Worker process of the torch forward baseline of ``explain.py`` (imports torch, not jax).

``python _torch_rnn.py IN.npz OUT.npz`` reads a ``torch.nn.LSTM`` or ``torch.nn.GRU``'s
weights in torch's layout (``w_ih`` (G n, m), ``w_hh`` (G n, n), ``b_ih``, ``b_hh``;
gate order i, f, g, o for the LSTM and r, z, n for the GRU), the inputs ``xs``
(T, m) and options; it runs the layer over the unbatched sequence under
``torch.inference_mode()`` with ``torch.set_num_threads(threads)`` (first call apart,
then the median of repeats, interleaving nothing: it is alone in its process) and
writes the times, the hidden states ``h`` (T, n) of the first call (for the
correctness check in the parent), the thread count, torch's version and its own peak
RSS (``VmHWM``).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from _torch_lstm import peak_rss


def main(in_path: str, out_path: str) -> None:
    data = np.load(in_path)
    opts = json.loads(str(data["opts"]))
    torch.set_num_threads(int(opts["threads"]))
    w_ih, w_hh, b_ih, b_hh, xs = (torch.from_numpy(np.ascontiguousarray(data[k]))
                                  for k in ("w_ih", "w_hh", "b_ih", "b_hh", "xs"))
    m, n = xs.shape[1], w_hh.shape[1]
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[opts["cell"]](m, n)
    with torch.no_grad():
        for name, value in (("weight_ih_l0", w_ih), ("weight_hh_l0", w_hh),
                            ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(layer, name).copy_(value)
    layer.eval()

    def call():
        with torch.inference_mode():
            return layer(xs)[0]

    t0 = time.perf_counter()
    h = call()
    first_s = time.perf_counter() - t0
    h = h.numpy().copy()
    repeats = int(opts["repeats"]) or int(min(9, max(3, opts["budget_s"] // max(first_s, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
        del out
    np.savez(out_path, first_s=first_s, times=np.asarray(times), h=h,
             threads=torch.get_num_threads(), version=np.asarray(torch.__version__),
             peak_rss=peak_rss())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
