"""medsilo: federated training across hospitals, with per-site privacy accounting."""

__version__ = "0.1.0"
