"""Differential privacy: DP-SGD (Opacus), accountants, the site ledger, audits."""
