"""`contextpool-hf` command line: one verb per module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module that owns it, one-line help). Each module defines
# `add_arguments(parser)` and `run(args) -> int | None`.
VERBS: dict[str, tuple[str, str]] = {
    "convert": ("contextpool_hf.convert", "convert a BERT/GPT-2/Llama/Marian/BART/ViT/ResNet checkpoint to ContextPool"),
    "prepare-data": ("contextpool_hf.data", "build the offline corpora, translation pairs and image sets"),
    "push": ("contextpool_hf.hub", "upload a checkpoint with its remote code and model card to the Hub"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contextpool-hf", description=__doc__)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        verb_parser.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # verb not built yet in this checkout
        module.add_arguments(verb_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    result = module.run(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
