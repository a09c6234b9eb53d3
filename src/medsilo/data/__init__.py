"""Readers, built-in datasets, partitioners and per-site splits (imports nothing of ours)."""
