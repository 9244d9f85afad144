"""rpa_bench.kernels"""
