"""The generated corea.v1 modules: `from corea_engine.protos import corea_pb2, corea_pb2_grpc`.

The modules are compiled from protos/ at install time (setup.py). In a source checkout where
they are missing or older than the .proto files, they are compiled here on first import, so a
fresh clone works without a reinstall.
"""

from __future__ import annotations

from . import _protogen

_protogen.ensure_generated()

from ._proto import corea_pb2, corea_pb2_grpc, llm_pb2, llm_pb2_grpc  # noqa: E402

__all__ = ["corea_pb2", "corea_pb2_grpc", "llm_pb2", "llm_pb2_grpc"]
