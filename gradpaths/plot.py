"""Figures of gradpaths results: each function takes results and returns a
``matplotlib.figure.Figure`` (matplotlib is imported on first use).

Example::

    import gradpaths as gp
    cell, params, xs = gp.exploding_lstm(steps=200)
    fig = gp.plot.growth_curves(gp.growth_curves(cell, params, xs))
    fig.savefig("growth.png")
"""

from gradpaths._plot import (
    gate_saturation as gate_saturation,
    growth_curves as growth_curves,
    jacobian_blocks as jacobian_blocks,
    lyapunov_spectrum as lyapunov_spectrum,
    phase_diagram as phase_diagram,
    route_use_counts as route_use_counts,
    step_spectra as step_spectra,
    training_curves as training_curves,
)

__all__ = [
    "gate_saturation",
    "growth_curves",
    "jacobian_blocks",
    "lyapunov_spectrum",
    "phase_diagram",
    "route_use_counts",
    "step_spectra",
    "training_curves",
]
