"""rfa-export doctor: what this install has (kernels, onnxruntime providers, TensorRT, onnxruntime-genai,
tokenizers, torch) and, for anything missing, why and how to get it."""

import importlib
from dataclasses import dataclass
from typing import Callable, List, Optional


@dataclass
class Finding:
    component: str
    available: bool
    detail: str  # what is there, or why not and what to do


def _module_version(name: str) -> Optional[str]:
    try:
        module = importlib.import_module(name)
    except Exception:  # a broken install raises more than ImportError
        return None
    return getattr(module, "__version__", "installed")


def _kernels() -> Finding:
    try:
        from ..ops.native import build_info, library_path, load_error
    except ImportError as e:
        return Finding("CUDA kernels", False, f"cannot look for them: {e} (the kernels run under torch)")

    info = build_info()
    if info is None:
        return Finding("CUDA kernels", False, load_error() or "not loaded")
    return Finding("CUDA kernels", True, f"{library_path()} ({info})")


def _torch() -> Finding:
    version = _module_version("torch")
    if version is None:
        return Finding("torch", False, "not installed (pip install torch); needed for export, verify and --backend torch")
    import torch

    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else \
        "no CUDA device visible (the CUDA kernels and --device cuda need one)"
    return Finding("torch", True, f"{version}; {cuda}")


def _onnxruntime() -> Finding:
    version = _module_version("onnxruntime")
    if version is None:
        return Finding("onnxruntime", False, "not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)")
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:
            pass
    providers = ort.get_available_providers()
    note = "" if "CUDAExecutionProvider" in providers else " (no CUDAExecutionProvider: pip install onnxruntime-gpu for --device cuda)"
    return Finding("onnxruntime", True, f"{version}; providers {', '.join(providers)}{note}")


def _tensorrt() -> Finding:
    version = _module_version("tensorrt")
    from ..runtime.tensorrt_backend import INSTALLED_PLUGIN  # imports neither tensorrt nor torch

    plugin = f"plugin {INSTALLED_PLUGIN}" if INSTALLED_PLUGIN.is_file() else \
        "no plugin library installed (pip install . with TensorRT headers, TensorRT_ROOT=..., builds it)"
    if version is None:
        return Finding("TensorRT", False, f"not installed (NVIDIA's tensorrt wheels or a TensorRT install); {plugin}")
    return Finding("TensorRT", True, f"{version}; {plugin}")


def _optional(component: str, module: str, why: str) -> Callable[[], Finding]:
    def check() -> Finding:
        version = _module_version(module)
        return Finding(component, version is not None, version if version is not None else f"not installed ({why})")

    return check


CHECKS: List[Callable[[], Finding]] = [
    _kernels, _torch, _onnxruntime, _tensorrt,
    _optional("onnxruntime-genai", "onnxruntime_genai", "pip install 'rfa-export[genai]'; needed for --genai exports"),
    _optional("tokenizers", "tokenizers", "pip install 'rfa-export[tokenizers]'; needed for --tokenizer"),
]


def diagnose() -> List[Finding]:
    return [check() for check in CHECKS]


def format_findings(findings: List[Finding]) -> str:
    from .. import __version__

    lines = [f"rfa-export {__version__}"]
    lines += [f"  {'ok ' if f.available else 'no '} {f.component:18s} {f.detail}" for f in findings]
    return "\n".join(lines)
