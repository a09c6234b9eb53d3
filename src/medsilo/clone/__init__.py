"""Differentially private synthetic data ("clones") of tables and annotated text."""
