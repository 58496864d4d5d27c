"""gradpaths: where, in a recurrent network, gradients explode or vanish.

The public API is listed here; the work lives in private modules.
"""

# --- cells, trajectories, per-step Jacobians
from gradpaths._cells import (
    GRU as GRU,
    LSTM as LSTM,
    RNN as RNN,
    Edge as Edge,
    Gates as Gates,
    GRUGates as GRUGates,
    GRUParams as GRUParams,
    GRUState as GRUState,
    LSTMParams as LSTMParams,
    LSTMState as LSTMState,
    Peepholes as Peepholes,
    RNNParams as RNNParams,
    RNNState as RNNState,
)
from gradpaths._protocols import (
    Activation as Activation,
    Cell as Cell,
    ClosedFormCell as ClosedFormCell,
    RoutedCell as RoutedCell,
    SaturatingCell as SaturatingCell,
)
# --- modern gated recurrences (sLSTM, minGRU, minLSTM, LRU)
from gradpaths._lru import LRU as LRU, LRUParams as LRUParams, LRUState as LRUState
from gradpaths._mingated import (
    MinGRU as MinGRU,
    MinGRUGates as MinGRUGates,
    MinGRUParams as MinGRUParams,
    MinLSTM as MinLSTM,
    MinLSTMGates as MinLSTMGates,
    MinLSTMParams as MinLSTMParams,
    MinState as MinState,
)
from gradpaths._slstm import SLSTM as SLSTM, SLSTMParams as SLSTMParams, SLSTMState as SLSTMState
# --- end of modern gated recurrences
from gradpaths._checks import (
    InputError as InputError,
    InputTypeError as InputTypeError,
    NonFiniteError as NonFiniteError,
    checked as checked,
)
from gradpaths._jacobians import (
    StepJacobians as StepJacobians,
    step_jacobians as step_jacobians,
    unroll as unroll,
)
from gradpaths._state import Layout as Layout
from gradpaths._stack import (
    Bidirectional as Bidirectional,
    BidirectionalExplanation as BidirectionalExplanation,
    Stack as Stack,
    StackState as StackState,
    explain_bidirectional as explain_bidirectional,
)

# --- routes, products, spectra, explanation
from gradpaths._routes import route_jacobians as route_jacobians
from gradpaths._products import (
    StepSpectra as StepSpectra,
    growth_curve as growth_curve,
    product_singular_values as product_singular_values,
    step_spectra as step_spectra,
)
from gradpaths._lyapunov import (
    finite_time_exponents as finite_time_exponents,
    local_stretching as local_stretching,
    lyapunov_exponents as lyapunov_exponents,
)
from gradpaths._counts import (
    RouteUseCounts as RouteUseCounts,
    route_use_counts as route_use_counts,
)
from gradpaths._explain import (
    Explanation as Explanation,
    GrowthRow as GrowthRow,
    explain as explain,
)
from gradpaths._routesets import (
    Driver as Driver,
    RouteSet as RouteSet,
    classify as classify,
    standard_sets as standard_sets,
)
from gradpaths._examples import (
    exploding_lstm as exploding_lstm,
    with_output_gain as with_output_gain,
)

# --- gradients and training
from gradpaths._gradients import (
    GradientGrowth as GradientGrowth,
    ParamGradients as ParamGradients,
    StateGradients as StateGradients,
    gradient_growth as gradient_growth,
    param_gradients as param_gradients,
    state_gradients as state_gradients,
)
from gradpaths._gradient_explain import (
    GradientExplanation as GradientExplanation,
    MemorySensitivity as MemorySensitivity,
    explain_gradient as explain_gradient,
    memory_sensitivity as memory_sensitivity,
)
from gradpaths._tasks import (
    AddingTask as AddingTask,
    Batch as Batch,
    CopyTask as CopyTask,
    Model as Model,
    ModelParams as ModelParams,
    Readout as Readout,
    SineTask as SineTask,
    TextTask as TextTask,
    make_task as make_task,
)
from gradpaths._train import (
    Event as Event,
    ExplosionDetector as ExplosionDetector,
    GrowthRegularizer as GrowthRegularizer,
    History as History,
    InitDiagnostics as InitDiagnostics,
    Probe as Probe,
    RecordWarning as RecordWarning,
    TrainResult as TrainResult,
    append_record as append_record,
    forget_bias_init as forget_bias_init,
    init_diagnostics as init_diagnostics,
    judged_steps as judged_steps,
    load_checkpoint as load_checkpoint,
    mark_resume as mark_resume,
    probe as probe,
    read_records as read_records,
    train as train,
)
from gradpaths._predict import (
    Prediction as Prediction,
    history_prediction as history_prediction,
    pooled_predictions as pooled_predictions,
    predict_events as predict_events,
)
# --- importers
from gradpaths import interop as interop

# --- plots and command line
from gradpaths import plot as plot
from gradpaths._report import (
    Report as Report,
    explain_report as explain_report,
    write_report as write_report,
)
from gradpaths._sweep import Sweep as Sweep, sweep as sweep
from gradpaths._views import (
    GateSaturation as GateSaturation,
    gate_saturation as gate_saturation,
    growth_curves as growth_curves,
    input_events as input_events,
)

from gradpaths import _version

__version__ = _version.version()
