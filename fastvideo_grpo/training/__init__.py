"""The training loop and what it keeps: run state, health, tracking, evaluation."""
