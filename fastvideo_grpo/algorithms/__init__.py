"""The training algorithms, one module each over the shared learner (`learner.py`) and
advantages (`advantages.py`), behind one table (`registry.ALGORITHMS`): the trainer, the
planner and the FLOP count look the configured one up (`registry.algorithm_of`) and ask it
what differs, never its name. This package imports nothing, so that its light modules (the
config's checks) import no torch."""
