"""Will it fit? A config's per-rank memory and time, planned on a CPU (planning/plan.py)."""
