"""Secure aggregation (Bonawitz et al. 2017, Bell et al. 2020): pure, no torch, no I/O."""
