"""Benchmarks (`python -m enlcn_jax.bench <part>`): each part prints a markdown table and writes
JSON.
"""
