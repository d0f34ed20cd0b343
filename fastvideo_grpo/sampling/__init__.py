"""Sampling: SDE and ODE steps, samplers, solvers, step plans, seeding and the rollout."""
