"""Build and run the C++ load client (cpp/corea_load.cc) so its figures sit next to Python's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .targets import RequestOptions

SOURCE_DIR = Path(__file__).resolve().parents[2]  # the checkout: CMakeLists.txt, cpp/, protos/
DEFAULT_BUILD_DIR = SOURCE_DIR / "build" / "cpp"


class CppClientError(RuntimeError):
    """The C++ client could not be built or did not produce a report."""


def missing_toolchain() -> str | None:
    """Why the C++ client cannot be built here (None when it can)."""
    if not (SOURCE_DIR / "CMakeLists.txt").is_file():
        return f"no CMakeLists.txt in {SOURCE_DIR} (not a source checkout)"
    for tool in ("cmake", "g++", "pkg-config", "protoc", "grpc_cpp_plugin"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install_cpp_deps.sh installs the C++ toolchain)"
    for module in ("grpc++", "protobuf"):
        if subprocess.run(["pkg-config", "--exists", module]).returncode != 0:
            return f"pkg-config finds no {module} (scripts/install_cpp_deps.sh installs libgrpc++-dev)"
    return None


def build(build_dir: str | Path = DEFAULT_BUILD_DIR, jobs: int = 2, build_type: str = "Release") -> Path:
    """Configure and build with CMake (incremental); returns the corea_load binary.

    build_type "Release" for measurements; "MinSizeRel" or an empty one compile faster where only
    correctness is checked (the generated gRPC code is most of the compile time).
    """
    reason = missing_toolchain()
    if reason:
        raise CppClientError(reason)
    build_dir = Path(build_dir)
    for command in (["cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir), f"-DCMAKE_BUILD_TYPE={build_type}"],
                    ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", "corea_load"]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise CppClientError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return build_dir / "corea_load"


def run(binary: str | Path, address: str, question_file: str | Path, levels: list[int], options: RequestOptions,
        *, requests: int | None = None, seconds: float | None = None, warmup: int = 1) -> dict:
    """Run the client over `levels`; returns its report (same keys as the Python load generator)."""
    command = [str(binary), "--target", address, "--questions", str(question_file),
               "--concurrency", ",".join(map(str, levels)), "--warmup", str(warmup),
               "--timeout", str(options.timeout_s), "--contract", options.contract]
    command += ["--seconds", str(seconds)] if seconds is not None else ["--requests", str(requests)]
    if options.threshold is not None:
        command += ["--threshold", str(options.threshold)]
    if options.mode:
        command += ["--mode", options.mode]
    if options.max_new_tokens:
        command += ["--max-new-tokens", str(options.max_new_tokens)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise CppClientError(f"corea_load exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise CppClientError(f"corea_load printed no JSON report ({err}): {done.stdout[-500:]!r}") from None
