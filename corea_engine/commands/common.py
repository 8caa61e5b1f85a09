"""Arguments shared by commands that load a model."""

from __future__ import annotations

import os


def add_model_args(parser, *, prefix: str = "", default_model: str | None = None) -> None:
    p = f"--{prefix}" if prefix else "--"
    parser.add_argument(f"{p}model", default=default_model, help="model: 'smollm2-135m' (embedded default) or a local folder")
    parser.add_argument(f"{p}device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(f"{p}dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def default_threads() -> int:
    """Torch intra-op threads: COREA_THREADS, else every core (one engine per process)."""
    return int(os.environ.get("COREA_THREADS", os.cpu_count() or 1))
