"""Decoding: the KV-cache sampler and the uncached greedy reference."""
