"""rpa_bench: performance analysis and roofline benchmarking for Ragged Paged Attention."""

__version__ = "0.1.0"
