"""Tasks: model factories and metrics."""
