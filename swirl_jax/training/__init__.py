"""Losses over step-wise examples (the RL trainer builds on them)."""
