"""Decoding: the uncached greedy reference (the KV-cache sampler builds on it)."""

from swirl_jax.sampling.uncached import greedy_decode_uncached
