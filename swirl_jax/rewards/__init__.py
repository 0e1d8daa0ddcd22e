"""Judges (process and outcome), answer normalization and matching."""
