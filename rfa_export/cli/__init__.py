"""rfa-export: verbs as subcommands (export is the default: `rfa-export MODEL.pt -o OUT_DIR`)."""

import argparse
import os
import sys
from typing import List, Optional

from .. import __version__
from . import doctor_cmd, export_cmd, generate_cmd, inspect_cmd, serve_cmd, translate_cmd, triton_cmd, verify_cmd

COMMANDS = {"export": export_cmd, "verify": verify_cmd, "inspect": inspect_cmd, "generate": generate_cmd,
            "translate": translate_cmd, "serve": serve_cmd, "triton": triton_cmd, "doctor": doctor_cmd}


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="rfa-export",
        description="Export RFA models to ONNX, verify, inspect and run the result.\n\n"
                    "  rfa-export MODEL.pt -o OUT_DIR        export (same as `rfa-export export ...`)\n"
                    "  rfa-export verify OUT_DIR --checkpoint MODEL.pt\n"
                    "  rfa-export inspect OUT_DIR\n"
                    "  rfa-export generate OUT_DIR --prompt TEXT [--backend onnxruntime|torch|tensorrt]\n"
                    "  rfa-export translate OUT_DIR --source TEXT [--beams 4]   (encoder-decoder exports)\n"
                    "  rfa-export serve OUT_DIR [--port 8000]  an OpenAI-compatible server\n"
                    "  rfa-export triton OUT_DIR -o REPO     a Triton model repository (implicit state)\n"
                    "  rfa-export doctor                     what this install has",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rfa-export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    for name, module in COMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "export")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("rfa-export: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, never a traceback, unless asked for
        if os.environ.get("RFA_EXPORT_DEBUG"):
            raise
        kind = "error" if isinstance(e, (ValueError, OSError, RuntimeError)) else "internal error"
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"rfa-export: {kind}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
