"""corea_engine: a small/large model cascade served over gRPC."""

import importlib.util
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

_HERE = Path(__file__).resolve().parent


class build_py_with_protos(build_py):
    """Compile protos/ into corea_engine/_proto before collecting packages.

    Runs for `pip install .` and for `pip install -e .` (setuptools runs build_py in editable
    mode too). The generated files land in the source tree (git-ignored) and are never edited.
    """

    def run(self):
        spec = importlib.util.spec_from_file_location("_protogen", _HERE / "corea_engine" / "_protogen.py")
        protogen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(protogen)
        protogen.generate()
        if "corea_engine._proto" not in self.packages:
            self.packages.append("corea_engine._proto")
        super().run()


setup(
    name="corea_engine",
    version="0.1.0",
    description="COREA cascade inference engine: calibrated SLM first, LLM on low confidence",
    python_requires=">=3.11",  # asyncio.timeout (deadlines); 3.10 reached its end of life in 2026-10
    packages=find_packages(include=["corea_engine", "corea_engine.*"]) + ["corea_kernels"],
    package_dir={"corea_kernels": "kernels"},
    package_data={"corea_engine.runtime": ["decode_attention.cpp"]},  # compiled where it runs
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
        # The engines' gRPC protocol (SglangScheduler), as SGLang, vLLM and SMG speak it.
        "smg-grpc-proto>=0.4.28",
        "prometheus-client>=0.20",
        "openai>=1.40",
        # the OpenAI-compatible HTTP front (corea serve --http-port)
        "starlette>=0.40",
        "uvicorn>=0.30",
        "httptools>=0.6",  # uvicorn's C HTTP/1.1 parser (uvicorn picks it over h11 when installed)
        "pydantic>=2.7",
        "math-verify>=0.7",
        "matplotlib>=3.8",
        "scikit-learn>=1.3",  # isotonic calibration (corea_engine/evaluation/calibrators.py)
        "tqdm",
        # builds runtime/decode_attention.cpp on first use (torch.utils.cpp_extension; a C++ compiler too)
        "ninja",
    ],
    extras_require={
        # fastapi + uvicorn: the OpenAI-compatible test server (tests/openai_compat_server.py)
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout>=2.3", "hypothesis>=6", "triton>=3.0", "psutil>=5.9", "httpx",
                "fastapi>=0.110", "uvicorn>=0.29"],
        # trl: SegmentedGRPOTrainer overrides private GRPOTrainer methods (checked by
        # tests/test_train_grpo.py), so only the minor release it was built and tested on.
        "train": ["trl>=1.16,<1.17", "datasets>=3"],
        # GPU serving (corea_engine/runtime/sglang_executor.py). On a CPU machine use
        # scripts/install_sglang_cpu.sh instead: a plain install replaces torch with a CUDA build.
        "sglang": ["sglang>=0.5,<0.6"],
    },
    cmdclass={"build_py": build_py_with_protos},
    entry_points={"console_scripts": ["corea=corea_engine.cli:main"]},
)
