"""corea_engine: a small/large model cascade served over gRPC."""

from setuptools import find_packages, setup

setup(
    name="corea_engine",
    version="0.1.0",
    description="COREA cascade inference engine: calibrated SLM first, LLM on low confidence",
    python_requires=">=3.10",
    packages=find_packages(include=["corea_engine", "corea_engine.*"]) + ["corea_kernels"],
    package_dir={"corea_kernels": "kernels"},
    install_requires=[
        # A range the CPU wheel on these machines (2.13.0) and a CUDA machine's own torch satisfy.
        "torch>=2.4",
        "transformers>=4.56,<6",
        "tokenizers",
        "safetensors",
        "accelerate>=1.0",
        "gguf>=0.17",
        "xgrammar>=0.1.25,<0.3",
        "numpy",
        "rich>=13",
        "grpcio>=1.66",
        "grpcio-tools>=1.66",
        "grpcio-health-checking>=1.66",
        "grpcio-reflection>=1.66",
        "protobuf>=5.27",
        "prometheus-client>=0.20",
        "openai>=1.40",
        "math-verify>=0.7",
        "matplotlib>=3.8",
        "tqdm",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout>=2.3", "hypothesis>=6", "triton>=3.0"],
        "train": ["trl>=0.20", "datasets>=3"],
    },
    entry_points={"console_scripts": ["corea=corea_engine.cli:main"]},
)
