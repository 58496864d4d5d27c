"""Training with optax, watched, and the same pieces for your own loop.

Where each idea lives:

* ``_regularizer``: :class:`GrowthRegularizer`, a loss term on the routes' exponents;
* ``_step``: the jitted, pure train step and the cached optax constructors;
* ``_probe``: :class:`Probe` and :func:`probe`, the routes' growth on probe sequences;
* ``_events``: :class:`Event` and the one rule for an event's dominant route;
* ``_detector``: :class:`ExplosionDetector`, the explosion rule, :func:`judged_steps`;
* ``_history``: :class:`History` and its JSON form;
* ``_records``: probes and events as JSON lines (:func:`append_record`,
  :func:`read_records`, :func:`mark_resume` where a resumed run restarts);
* ``_checkpoint``: atomic checkpoints and resuming;
* ``_loop``: :func:`train` itself, the progress line and Ctrl-C;
* ``_init``: forget-bias initialisation and its diagnostics.
"""

from gradpaths._train._checkpoint import (
    is_checkpoint as is_checkpoint,
    load_checkpoint as load_checkpoint,
    save_checkpoint as save_checkpoint,
)
from gradpaths._train._detector import (
    EXPLOSION_MIN_HISTORY as EXPLOSION_MIN_HISTORY,
    ExplosionDetector as ExplosionDetector,
    judged_steps as judged_steps,
)
from gradpaths._train._events import Event as Event, dominant_route_of as dominant_route_of
from gradpaths._train._history import History as History
from gradpaths._train._init import (
    InitDiagnostics as InitDiagnostics,
    forget_bias_init as forget_bias_init,
    init_diagnostics as init_diagnostics,
)
from gradpaths._train._loop import TrainResult as TrainResult, train as train
from gradpaths._train._probe import Probe as Probe, probe as probe
from gradpaths._train._records import (
    MAX_DEPTH as MAX_DEPTH,
    MAX_STEP as MAX_STEP,
    RecordWarning as RecordWarning,
    append_record as append_record,
    check_records_path as check_records_path,
    mark_resume as mark_resume,
    read_records as read_records,
)
from gradpaths._train._regularizer import GrowthRegularizer as GrowthRegularizer
