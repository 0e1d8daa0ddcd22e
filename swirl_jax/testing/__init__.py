"""Test fakes for swirl_jax and for users' code built on it: a character vocabulary and a scripted
sampler (`fakes`), judged trajectories with known verdicts (`judged`), a loopback HTTP server
(`local_server`), a tiny GGUF file (`tiny_gguf`), and the environment of a CPU subprocess
(`subprocesses`)."""
