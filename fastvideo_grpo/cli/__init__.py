"""Command lines: train, evaluate, export, plan, plot, ablate."""
