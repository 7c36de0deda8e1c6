"""The network and its math: swappable functions (registry), random features, attention, ENLCA /
ENLCN, losses, precisions.
"""
