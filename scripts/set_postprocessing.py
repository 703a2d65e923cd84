"""Store connected-component rules chosen by `vldun evaluate --decide-postprocessing RULES.json` in a checkpoint.

Usage: python scripts/set_postprocessing.py WEIGHTS RULES.json [--only LABEL_SET ...]

Writes them as ``meta["postprocessing"]`` in WEIGHTS.json (atomically; the weights and their checksum are
untouched). Inference applies the rule of the label set it segments with (``--no-postprocessing`` to skip).
"""

from __future__ import annotations

import argparse
import json
import sys

from napari_vldun.postprocess import PostprocessRule, write_rules


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("rules")
    ap.add_argument("--only", nargs="+", default=None, help="keep only these label sets' rules")
    a = ap.parse_args(argv)
    rules = json.loads(open(a.rules).read())
    if a.only:
        missing = [k for k in a.only if k not in rules]
        if missing:
            print(f"{a.rules} has no rule for {', '.join(missing)}", file=sys.stderr)
            return 2
        rules = {k: rules[k] for k in a.only}
    path = write_rules(a.weights, rules)
    for name, d in rules.items():
        print(f"{name}: {PostprocessRule.from_dict(d).describe()}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
