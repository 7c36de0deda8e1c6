"""Scoring by the published protocol: metrics, memory budgets, inference (bucketed, tiled,
self-ensemble), the evaluator, comparison panels and eval.py's runner.
"""
