"""Write the example notebooks and execute them, so their outputs (figures) are committed.

    python notebooks/make_notebooks.py            # write and execute all
    python notebooks/make_notebooks.py 01 03      # only those whose name starts so

The notebooks are thin: every computation is one call into gradpaths; the knobs sit
in the first code cell with small defaults. ``tests/test_notebooks.py`` executes them.
"""

from __future__ import annotations

import pathlib
import sys
import time

import nbclient
import nbformat

HERE = pathlib.Path(__file__).parent
md = nbformat.v4.new_markdown_cell
code = nbformat.v4.new_code_cell

SETUP = """%matplotlib inline
import jax
jax.config.update("jax_enable_x64", True)   # exact route-use counts need float64
import numpy as np
import gradpaths as gp
"""

NOTEBOOKS = {}

# --------------------------------------------------------------------------- 01

NOTEBOOKS["01_why_lstms_still_explode"] = [
    md("""# Why can LSTMs still suffer from exploding gradients?

The question: LSTMs were built so that gradients do not vanish, yet Sutskever, Vinyals &
Le (2014) clip gradients because LSTMs "can have exploding gradients". Why?

The answer to check: the cell state `c` is updated additively, `c' = z * i + c * f`, so the
gradient along the *carousel* `c -> c'` is multiplied by `diag(f)` at each step and, with
`0 < f < 1`, can only shrink slowly. But the carousel is not the only path between two
steps. The path `h_t -> o_{t+1} -> h_{t+1} -> o_{t+2}` multiplies by `R_o` at every step,
exactly as a vanilla RNN multiplies by `W`; so do the paths through `R_z`, `R_i`, `R_f`.

gradpaths splits every step Jacobian exactly into these *routes* (carousel, z, i, f, o)
and measures the growth of long products of any set of them. This notebook answers the
question step by step on the built-in example of the question: forget gates near 1 and a
large `R_o`. All knobs are in the next cell; the defaults run in well under a minute."""),
    code(SETUP + """
HIDDEN = 16      # n, units of the LSTM
STEPS = 300      # T, length of the input sequence
WARMUP = 50      # steps left out of the growth rates
SEED = 0
WINDOW = 40      # steps of the route-use counts

cell, params, xs = gp.exploding_lstm(hidden=HIDDEN, steps=STEPS, seed=SEED)
ex = gp.explain(cell, params, xs, warmup=WARMUP)
cell"""),
    md("""## 1. The carousel alone does not amplify

The carousel's Jacobian is `[[diag(f), 0], [diag(g_c f), 0]]`: the cell state is copied,
scaled by the forget gate. Its growth rate (top Lyapunov exponent, nats per step) is the
mean of `log f` of the slowest unit: negative whenever `f < 1`."""),
    code("""carousel = ex.row("carousel").exponent
print(f"carousel alone: {carousel:+.4f} nats/step "
      f"(a factor e every {1 / -carousel:.0f} steps)")
print(f"forget gate near 1 (saturated high): {ex.saturation['f']['high']:.0%} of (step, unit) pairs")
assert carousel < 0"""),
    md("""## 2. Yet the whole product grows

The gradient that reaches step 0 from step T is multiplied by the product
`J_{T-1} ... J_1 J_0` of the full step Jacobians. Its growth rate is positive: the
gradients explode, although the carousel alone shrinks."""),
    code("""print(f"full product: {ex.exponent:+.4f} nats/step, "
      f"a factor e^{ex.exponent * (STEPS - WARMUP):.0f} over {STEPS - WARMUP} steps")
assert ex.exponent > 0
print(ex)"""),
    md("""## 3. Which route? Cut them one at a time

`all but r` is the product with route `r` cut at every step (its derivative only; the
trajectory is unchanged). Cutting the o route stops the growth: the explosion needs the
paths through `R_o`. The growth curves show `log ||J_j ... J_0||_2` for each route set:
the slope is the growth rate."""),
    code("""for r in cell.routes:
    print(f"all but {r:<9} {ex.row('all but ' + r).exponent:+.4f} nats/step")
print("dominant route:", ex.driver["dominant"], "| kind:", ex.driver["kind"])
assert ex.driver["dominant"] == "o" and ex.row("all but o").exponent < 0
gp.plot.growth_curves(gp.growth_curves(cell, params, xs))"""),
    md("""## 4. The paths: how often does the gradient take the o route?

Over a window of `L` steps the product expands into a sum over sequences of routes:
`prod_t (J^other_t + lambda J^o_t) = sum_k lambda^k C_k`, where `C_k` sums every path
that takes the o route at exactly `k` of the `L` steps (computed exactly, from the
polynomial's values at roots of unity). The question's two-step path is one term of
`C_2`. Where does the size of the product lie?"""),
    code("""counts = gp.route_use_counts(cell, params, xs, route="o", start=WARMUP, stop=WARMUP + WINDOW)
log_norms = np.asarray(counts.log_norms)
near = np.flatnonzero(log_norms > log_norms.max() - 1.0)
print(f"within 1 nat of the largest part: paths using the o route {near.min()} to "
      f"{near.max()} times out of {WINDOW}")
print(f"paths using it at every step: log ||C_L|| = {log_norms[-1]:.1f} nats (negligible)")
gp.plot.route_use_counts(counts, route="o")"""),
    md("""No single count carries the product: paths that take the o route at some steps and
the carousel or the other routes at the others all contribute, and together they exceed
each part (the dashed line). Paths that stay on the o route throughout are negligible:
the o route alone shrinks (section 3), because the output gate's derivative is small
where `o` saturates. The explosion comes from the *mix*: the carousel carries the signal
between steps where `R_o` amplifies it."""),
    md("""## 5. Where: steps and units

The growth is not uniform in time: some steps stretch a lot (the spectral norm of their
Jacobian is far above 1), others shrink. The heatmaps split the Jacobian of the step that
stretches most by route: the o route's block `dh'/dh` holds the large entries (a row of
`R_o` scaled by the output gate's derivative)."""),
    code("""step = ex.peak_steps[0][0]
gp.plot.jacobian_blocks(gp.route_jacobians(cell, params, xs[: step + 1]), step=step)"""),
    code("""gp.plot.step_spectra(gp.step_spectra(cell, params, xs), xs=xs, local=ex.local)"""),
    md("""## Answer

* The carousel (`c -> c'` through `c * f`) contracts: forget gates below 1 never amplify.
  This is why LSTMs resist *vanishing* gradients: the carousel keeps the gradient alive
  over `1 / (1 - f)` steps.
* The gradient also travels through `h`, and every step's path from `h` to the gates
  multiplies by a recurrent matrix (`R_o`, `R_z`, ...). Products of these factors can
  grow like a vanilla RNN's `W^T`: with a large `R_o` here, they make the whole product
  grow although no route grows alone; cutting the o route stops it.
* So LSTMs still explode, and gradient clipping (notebook 03) is still needed.

From the shell, `gradpaths explain` runs this analysis on the same model and
`gradpaths explain --out report` writes all these figures to a report folder."""),
]

# --------------------------------------------------------------------------- 02

NOTEBOOKS["02_routes_and_long_products"] = [
    md("""# Routes and long products

A step Jacobian `J_t = d s_{t+1} / d s_t` (state `s = (c, h)`) is the sum of its routes,
exactly: `J_t = J^carousel + J^z + J^i + J^f + J^o`. What matters for gradients over a
horizon is the *product* `J_{T-1} ... J_0`, and products do not behave like their
factors. This notebook shows the tools gradpaths has for long products: per-step spectra,
growth curves of route sets, the Lyapunov spectrum, and a phase diagram over recurrent
gain and forget bias. Knobs first; small defaults."""),
    code(SETUP + """
HIDDEN = 16
STEPS = 200
WARMUP = 50
SEED = 1
GAINS = [1.0, 4.0, 16.0, 64.0]       # gain of R_o in the phase diagram
FORGET_BIASES = [0.0, 2.0, 4.0]

cell, params, xs = gp.exploding_lstm(hidden=HIDDEN, steps=STEPS, seed=SEED)"""),
    md("""## 1. Routes add up to the Jacobian

`gp.route_jacobians` gives each route's share (closed form); their sum is the full
Jacobian from `gp.step_jacobians`, to round-off."""),
    code("""routes = gp.route_jacobians(cell, params, xs)
full = gp.step_jacobians(cell, params, xs).matrix
error = np.max(np.abs(sum(r.matrix for r in routes.values()) - full))
print(f"routes: {list(routes)}; max |sum of routes - J| = {error:.1e}")
assert error < 1e-12"""),
    md("""## 2. One step is not the product

Many steps stretch (`log ||J_t||_2 > 0`, even `log rho(J_t) > 0`), yet the product can
shrink, or grow at a much smaller rate: the directions that one step stretches are not
the ones the next step stretches. The mean of `log ||J_t||_2` only bounds the growth
rate of the product from above."""),
    code("""spectra = gp.step_spectra(cell, params, xs)
lam = gp.lyapunov_exponents(cell, params, xs, warmup=WARMUP)
print(f"mean log ||J_t||_2 = {np.mean(np.log(spectra.norm)):+.3f} nats/step")
print(f"top Lyapunov exponent of the product = {lam[0]:+.4f} nats/step")
assert lam[0] <= np.mean(np.log(spectra.norm))
gp.plot.step_spectra(spectra, xs=xs)"""),
    md("""## 3. Growth curves of route sets

Restricting every step to a set of routes gives a product of its own. The carousel
alone shrinks; adding one route to it, or removing one from the whole, shows which
routes the growth needs."""),
    code("""curves = gp.growth_curves(cell, params, xs,
                          sets=["full", "carousel", "carousel+o", "carousel+z", "all but o"])
gp.plot.growth_curves(curves)"""),
    md("""## 4. The Lyapunov spectrum

The exponents `lambda_1 >= lambda_2 >= ...` are the growth rates of the product's
leading directions (volumes of dimension k grow at `lambda_1 + ... + lambda_k`).
Cutting the o route lowers the top of the spectrum below 0."""),
    code("""cut = gp.lyapunov_exponents(cell, params, xs, warmup=WARMUP, routes=["carousel", "z", "i", "f"])
print(f"top exponent: full {lam[0]:+.4f}, all but o {cut[0]:+.4f} nats/step")
assert cut[0] < 0 < lam[0]
gp.plot.lyapunov_spectrum({"full": lam, "all but o": cut})"""),
    md("""## 5. A phase diagram

`gp.sweep` scales one random LSTM's `R_o` by each gain and sets the forget bias, then
measures the top exponent of the whole and of each route. Red: growth; blue: decay; the
black line is 0. The whole grows at large gain and large forget bias (f near 1 keeps the
carousel from damping), while the carousel and the o route alone never do."""),
    code("""sweep = gp.sweep(gains=GAINS, forget_biases=FORGET_BIASES, hidden=HIDDEN, steps=STEPS,
                 warmup=WARMUP)
print(sweep)
gp.plot.phase_diagram(sweep)"""),
]

# --------------------------------------------------------------------------- 03

NOTEBOOKS["03_training_with_and_without_clipping"] = [
    md("""# Training with and without gradient clipping

An LSTM starting in the question's regime (forget gates near 1, a large `R_o`) is
trained with plain SGD on the adding problem, once as is and once with the gradient's
global norm clipped (`optax.clip_by_global_norm`). `gp.train` records every step's loss
and gradient norm, marks explosion events (a norm far above its running median), and
probes each route's growth as training goes. Knobs first; small defaults."""),
    code(SETUP + """import optax

LENGTH = 30          # sequence length of the adding task
HIDDEN = 16
STEPS = 50           # training steps
LEARNING_RATE = 0.3  # plain SGD
CLIP = 1.0           # global-norm threshold of the clipped run
OUTPUT_GAIN = 32.0   # initial gain of R_o
FORGET_BIAS = 3.0
SEED = 0

task = gp.make_task("adding", LENGTH)
model = gp.Model.for_task(gp.LSTM(task.input_size, HIDDEN), task)
k_init, k_ro, k_train = jax.random.split(jax.random.key(SEED), 3)
params = model.init(k_init, forget_bias=FORGET_BIAS, recurrent_gain=0.5)
R_o = OUTPUT_GAIN / HIDDEN**0.5 * jax.random.normal(k_ro, (HIDDEN, HIDDEN))
params = params._replace(cell=params.cell._replace(R=params.cell.R._replace(o=R_o)))"""),
    md("""## 1. The starting point explodes

Before training, the explanation on a sequence of the task: the full product grows,
although the carousel contracts; the verdict names the routes it needs."""),
    code("""xs = task.sample(jax.random.key(1), 1).xs[0]
ex = gp.explain(model.cell, params.cell, xs)
assert ex.exponent > 0 > ex.row("carousel").exponent
print(ex.verdict)"""),
    md("""## 2. Train twice, from the same start and the same batches"""),
    code("""runs = {}
for label, clip in [("no clipping", None), (f"clip {CLIP:g}", CLIP)]:
    result = gp.train(model, params, task, key=k_train, steps=STEPS,
                      optimizer=optax.sgd(LEARNING_RATE), clip=clip, probe_every=10)
    runs[label] = result.history
    h = result.history
    print(f"{label:>12}: final loss {h.loss[-1]:.3g}, largest gradient norm "
          f"{np.nanmax(h.grad_norm):.3g}, {len(h.explosions)} explosion events")
gp.plot.training_curves(runs, clip=CLIP)"""),
    md("""Without clipping, the first exploding gradients throw the parameters far away and
training diverges: loss and gradient norm run off together (the trivial baseline,
predicting the mean, is the dashed line). With clipping, a step is never longer than
`learning rate x threshold`: the gradient norm before clipping (plotted) still exceeds
the threshold, but the updates stay bounded and training goes on. Clipping treats the
symptom; the routes say where it comes from.

## 3. Each run's history in detail"""),
    code("""clipped = runs[f"clip {CLIP:g}"]
print("largest single-route exponent at any probe:",
      f"{np.nanmax(clipped.route_exponents):+.4f} nats/step")
assert np.nanmax(clipped.route_exponents) < 0
gp.plot.training_curves(clipped, clip=CLIP)"""),
    md("""The lower panel shows the top exponent of the whole product on fixed probe
sequences, and of each route alone: as in notebook 01, no route grows on its own; the
growth of the whole comes from routes acting together.

From the shell, `gradpaths train --compare --optimizer sgd --learning-rate 0.3 --length 30
--steps 50 --out run` runs this comparison and writes the histories and the figures
(adam is the default optimizer)."""),
]

# --------------------------------------------------------------------------- 04

NOTEBOOKS["04_model_from_pytorch"] = [
    md("""# Analysing an LSTM trained in PyTorch

`gp.interop.from_torch` takes a PyTorch `nn.LSTM` (or `nn.GRU`, `nn.RNN`, their
`*Cell`s), its `state_dict()`, or the same arrays saved with NumPy, and returns a
gradpaths cell and parameters that reproduce PyTorch's forward pass. With torch
installed, pass the module or its state dict directly:

```python
cell, params = gp.interop.from_torch(model.lstm)                 # or model.lstm.state_dict()
np.savez("lstm.npz", **{k: v.detach().numpy() for k, v in model.lstm.state_dict().items()})
```

This notebook needs no torch: it writes a state dict in PyTorch's layout with NumPy
(gates stacked by rows in the order i, f, g, o; two biases), saves it as `.npz`,
imports it, checks the forward pass against PyTorch's equations, and explains it.
Knobs first."""),
    code(SETUP + """import os, tempfile

INPUTS = 3
HIDDEN = 8
STEPS = 200
SEED = 0
FORGET_BIAS = 3.0    # put in bias_hh's f rows, as a trained model often has
OUTPUT_GAIN = 60.0   # scale of the o rows of weight_hh"""),
    md("""## 1. A state dict in PyTorch's layout

`weight_ih_l0` is (4H, m) and `weight_hh_l0` is (4H, H), rows in the order i, f, g, o
(`g` is the block input, gradpaths' `z`); `bias_ih_l0 + bias_hh_l0` is the bias."""),
    code("""rng = np.random.default_rng(SEED)
H, m = HIDDEN, INPUTS
weight_hh = rng.normal(0, 0.5 / np.sqrt(H), (4 * H, H))
weight_hh[3 * H:] *= OUTPUT_GAIN / 0.5                       # the o rows: a large R_o
bias_hh = np.zeros(4 * H)
bias_hh[H:2 * H] = FORGET_BIAS                               # the f rows
state_dict = {"weight_ih_l0": rng.normal(0, 1 / np.sqrt(m), (4 * H, m)),
              "weight_hh_l0": weight_hh,
              "bias_ih_l0": rng.normal(0, 0.1, 4 * H),
              "bias_hh_l0": bias_hh}
path = os.path.join(tempfile.mkdtemp(), "lstm.npz")
np.savez(path, **state_dict)
print({k: v.shape for k, v in np.load(path).items()})"""),
    md("""## 2. Import it and check the forward pass

`from_torch` reorders the gates into gradpaths' names (z, i, f, o) and adds the two
biases. Running PyTorch's own equations in NumPy on the same inputs gives the same
outputs `h_t`, to round-off."""),
    code("""with np.load(path) as data:
    cell, params = gp.interop.from_torch(dict(data))
print(cell)

def torch_lstm_forward(sd, xs):
    \"\"\"nn.LSTM's equations (gates i, f, g, o), one layer, zero initial state.\"\"\"
    h = c = np.zeros(H)
    out = []
    for x in xs:
        a = sd["weight_ih_l0"] @ x + sd["bias_ih_l0"] + sd["weight_hh_l0"] @ h + sd["bias_hh_l0"]
        i, f, g, o = np.split(a, 4)
        sig = lambda v: 1 / (1 + np.exp(-v))
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.array(out)

xs = np.asarray(jax.random.normal(jax.random.key(SEED), (STEPS, INPUTS)))
states = gp.unroll(cell, params, xs)
error = np.max(np.abs(np.asarray(states.h[1:]) - torch_lstm_forward(state_dict, xs)))
print(f"max |h (gradpaths) - h (PyTorch equations)| = {error:.1e}")
assert error < 1e-8   # round-off, amplified along a trajectory whose exponent is > 0"""),
    md("""## 3. Explain it

The same analysis as for a built-in model: which route makes the gradients explode."""),
    code("""ex = gp.explain(cell, params, xs, warmup=50)
print(ex)"""),
    code("""gp.plot.growth_curves(gp.growth_curves(cell, params, xs))"""),
    code("""gp.plot.gate_saturation(gp.gate_saturation(cell, params, xs), window=5)"""),
    md("""## From the shell

The same file, the same analysis, and a report folder with every figure:

```
gradpaths explain --weights lstm.npz --format torch --steps 200 --out lstm-report
```

`--format keras|flax|equinox|haiku` reads the other frameworks' layouts; `--layer` and
`--direction` pick one layer of a stacked or bidirectional module; `--input-file xs.npy`
analyses your own input sequence instead of random inputs."""),
]


def build(name: str, cells: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 300) -> None:
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}}).execute()


def main(prefixes: list[str]) -> None:
    for name, cells in NOTEBOOKS.items():
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        nb = build(name, cells)
        start = time.perf_counter()
        execute(nb)
        for k, cell in enumerate(nb.cells):    # no run-specific noise in the committed files
            cell.id = f"{name[:2]}-{k:02d}"
            if cell.cell_type == "code":
                cell.metadata = {}
        nbformat.validate(nb)
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
