"""rpa_bench.reports"""
