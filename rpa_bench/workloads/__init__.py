"""rpa_bench.workloads"""
