"""argparse types the subcommands share, each turning bad text into argparse's one-line usage error, and the
checks of option combinations they share."""

import argparse
import math


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in [0, 65535] (0: any free one), got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def non_empty_text(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def check_model_source(args) -> None:
    """generate, translate, serve: an export runs on every backend but torch, which runs --checkpoint (with its
    --tokenizer); an option the chosen backend would ignore is an error, not silently dropped."""
    if args.backend == "torch":
        return
    if args.out_dir is None:
        raise ValueError(f"--backend {args.backend} needs OUT_DIR (an export directory)")
    for option, value, what in (("--checkpoint", args.checkpoint, "weights"), ("--tokenizer", args.tokenizer, "tokenizer")):
        if value is not None:
            raise ValueError(f"{option} is for --backend torch: an export carries its own {what}")


TENSORRT_FLAGS = {"plugin_library": "--plugin-library", "engine_cache": "--engine-cache"}


def add_tensorrt_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin-library", help="TensorRT: our plugin library (librfa_trt_plugin.so)")
    p.add_argument("--engine-cache", help="TensorRT: folder for built engines (default OUT_DIR/trt_engines)")


def tensorrt_options(args) -> dict:
    """--plugin-library and --engine-cache as the TensorRT backend's options; with another backend, an error."""
    options = {name: getattr(args, name) for name in TENSORRT_FLAGS if getattr(args, name) is not None}
    if options and args.backend != "tensorrt":
        raise ValueError(f"{TENSORRT_FLAGS[next(iter(options))]} is for --backend tensorrt")
    return options


def cuda_graph_option(cuda_graph: bool, backend: str, device: str) -> dict:
    """The backend option --cuda-graph asks for ({} without it): only where it takes effect, onnxruntime or
    torch on CUDA (TensorRT replays its own way)."""
    if not cuda_graph:
        return {}
    if backend not in ("onnxruntime", "torch"):
        raise ValueError(f"--cuda-graph is for --backend onnxruntime or torch, not {backend}")
    if device != "cuda":
        raise ValueError("--cuda-graph needs --device cuda")
    return {"cuda_graph": True}
