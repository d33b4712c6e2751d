"""stp_jax: SpaceTimePilot (camera x time video re-rendering) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="stp_jax",
    version="0.1.0",
    description="SpaceTimePilot / ReCamMaster / Wan2.1 video DiT in JAX/Flax for TPU pods and GPUs",
    packages=find_packages(include=["stp_jax", "stp_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.9",
        "ml-collections>=1.0",
        "clu>=0.0.12",
        "einops>=0.8",
        "safetensors>=0.5",
        "numpy>=2.0",
        "ml_dtypes>=0.5",
        "av>=14",
        "tqdm>=4.66",
        "absl-py>=2.1",
        "importlib_resources>=6",  # tensorflow-datasets needs it without TensorFlow
        "matplotlib>=3.8",
        "tokenizers>=0.20",  # umT5 tokenizer.json
        "sentencepiece>=0.2",  # umT5 spiece.model
    ],
    extras_require={
        "torch": ["torch==2.13.0", "diffusers>=0.35", "transformers>=4.55", "accelerate>=1.0"],
        "tpu": ["libtpu==0.0.42.*"],  # the version jax[tpu] 0.10.2 pins
        "gpu": ["jax[cuda13]"],
        "dev": ["pytest>=8", "hypothesis>=6.100"],
    },
    entry_points={
        "console_scripts": [
            "stp-convert=stp_jax.cli:convert_main",
            "stp-render=stp_jax.cli:render_main",
            "stp-train=stp_jax.train:main",
            "stp-sample=stp_jax.sample:main",
            "stp-eval=stp_jax.evaluate:main",
            "stp-precompute=stp_jax.precompute:main",
            "stp-aot=stp_jax.aot:main",
        ],
    },
)
