"""rpa_bench.roofline"""
