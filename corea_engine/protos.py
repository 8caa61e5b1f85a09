"""The generated corea.v1 modules: `from corea_engine.protos import corea_pb2, corea_pb2_grpc`.

The modules are compiled from protos/ at install time (setup.py). In a source checkout where
they are missing or older than the .proto files, they are compiled here on first import, so a
fresh clone works without a reinstall. If modules compiled by another grpcio-tools refuse this
runtime (generated code checks the protobuf and grpcio versions), they are compiled again with
the grpc_tools installed here, when there is one.
"""

from __future__ import annotations

from . import _protogen

_protogen.ensure_generated()

try:
    from ._proto import corea_pb2, corea_pb2_grpc
except Exception as err:  # a version check in generated code; ImportError when a module is missing
    import importlib
    import sys

    try:
        _protogen.generate()
    except _protogen.ProtoCompileError:
        raise err from None
    for name in list(sys.modules):
        if name.startswith(f"{__package__}._proto"):
            del sys.modules[name]
    importlib.invalidate_caches()
    from ._proto import corea_pb2, corea_pb2_grpc

__all__ = ["corea_pb2", "corea_pb2_grpc"]
