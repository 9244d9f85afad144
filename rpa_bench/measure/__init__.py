"""rpa_bench.measure"""
