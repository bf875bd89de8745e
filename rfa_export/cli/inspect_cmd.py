"""rfa-export inspect OUT_DIR: inputs, outputs, state layout, lowering, opsets, size."""

import json


def add_parser(sub):
    p = sub.add_parser("inspect", help="describe an export directory",
                       description="Show an export's inputs, outputs, state tensors, lowering, opsets and size.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..tools.inspect_export import describe_export_dir, format_description

    description = describe_export_dir(args.out_dir)
    print(json.dumps(description, indent=2) if args.json else format_description(description))
    return 0
