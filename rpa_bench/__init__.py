"""rpa_bench: performance analysis and roofline benchmarking for Ragged Paged Attention."""

import time as _time

IMPORTED_AT = _time.perf_counter()  # start-up is counted from here (rpa_bench.measure.phases)

from rpa_bench import _libtpu_env  # noqa: E402 - after the clock starts

_libtpu_env.apply()  # before anything imports JAX: libtpu stays quiet off TPU

__version__ = "0.1.0"

# Ctrl-C pressed while the command line started the command (imports, config): remembered
# here by rpa_bench.cli for commands that take it over (CTRL_C_AWARE), so none is lost
CTRL_C = {"pressed": False}
