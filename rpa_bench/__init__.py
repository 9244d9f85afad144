"""rpa_bench: performance analysis and roofline benchmarking for Ragged Paged Attention."""

from rpa_bench.measure import phases as _phases  # noqa: F401 - start-up is counted from this import
from rpa_bench import _libtpu_env

_libtpu_env.apply()  # before anything imports JAX: libtpu stays quiet off TPU

__version__ = "0.1.0"
