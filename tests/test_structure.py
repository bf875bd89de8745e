"""The layering the code promises: format under everything, runtime never importing export, and the
onnxruntime decode path running without torch."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rfa_export"


def imported_modules(path: Path):
    """Absolute names of the rfa_export modules a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return [n for n in names if n.startswith("rfa_export")]


def layer_imports(layer: str):
    return {str(p.relative_to(ROOT)): imported_modules(p) for p in (PACKAGE / layer).rglob("*.py")}


def test_runtime_never_imports_export():
    offenders = {f: [m for m in mods if m.startswith("rfa_export.export")] for f, mods in layer_imports("runtime").items()}
    assert not {f: m for f, m in offenders.items() if m}


def test_serving_sits_on_runtime_and_format_only():
    allowed = ("rfa_export.serving", "rfa_export.runtime", "rfa_export.format")
    offenders = {f: [m for m in mods if not m.startswith(allowed)] for f, mods in layer_imports("serving").items()}
    assert not {f: m for f, m in offenders.items() if m}


def test_format_imports_only_format():
    offenders = {f: [m for m in mods if not m.startswith("rfa_export.format")] for f, mods in layer_imports("format").items()}
    assert not {f: m for f, m in offenders.items() if m}
    for path in (PACKAGE / "format").rglob("*.py"):  # module level: a map may import torch when applied
        assert not re.search(r"^(import|from)\s+(torch|onnx|onnxscript|numpy)\b", path.read_text(), re.M), path


def test_generate_on_onnxruntime_does_not_import_torch(bundled_export):
    """`rfa-export generate` on onnxruntime loads neither torch nor onnx nor onnxscript (python -X importtime)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rfa_export", "generate", str(bundled_export),
                           "--prompt", "The import", "--max-new-tokens", "3"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", proc.stderr, re.M))
    assert "rfa_export.runtime.onnxruntime_backend" in imported
    assert not imported & {"torch", "onnx", "onnxscript"}, sorted(imported & {"torch", "onnx", "onnxscript"})


@pytest.mark.parametrize("module", ["rfa_export.runtime", "rfa_export.runtime.seq2seq", "rfa_export.format.export_dir",
                                    "rfa_export.cli"])
def test_light_modules_import_without_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'onnx', 'onnxscript') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
