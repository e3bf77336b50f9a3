"""`contextpool-hf` command line: one verb per module, imported only when used.

Flags are spelled with underscores, as in transformers' example scripts (`--no_check`,
`--output_dir`); the older dashed spelling (`--no-check`) is still accepted.
"""

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
    "train": ("contextpool_hf.train_cli", "train with Trainer: clm, mlm, classification, translation, image-classification"),
}
VERB_ALIASES: dict[str, list[str]] = {"prepare-data": ["prepare_data"]}


def package_version() -> str:
    """The installed distribution's version (the source tree's pyproject version when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("contextpool-hf")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contextpool-hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"contextpool-hf {package_version()}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, (module_name, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text, aliases=VERB_ALIASES.get(verb, []))
        verb_parser.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # verb not built yet in this checkout
        module.add_arguments(verb_parser)
        _show_one_spelling(verb_parser)
    return parser


def _show_one_spelling(parser: argparse.ArgumentParser) -> None:
    """Drop a dashed alias (`--no-check`) from --help where the underscore flag exists; it still parses."""
    for action in parser._actions:
        strings = action.option_strings
        action.option_strings = [s for s in strings
                                 if not (s.startswith("--") and "-" in s[2:] and "--" + s[2:].replace("-", "_") in strings)]  # fmt: skip


def _verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def normalize_flags(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Rewrite the dashed spelling of a verb's flags (`--no-check`) to the underscore one (`--no_check`).

    Only flags that the chosen verb defines with underscores are rewritten, so values and the
    arguments `train` hands to a script (whose HfArgumentParser takes both spellings) pass unchanged.
    """
    verbs = _verb_parsers(parser)
    out = list(argv)
    verb_index = next((i for i, token in enumerate(out) if token in verbs), None)
    if verb_index is None:
        return out
    known = set(verbs[out[verb_index]]._option_string_actions)
    for i in range(verb_index + 1, len(out)):
        token = out[i]
        if token == "--":
            break
        if not token.startswith("--") or "-" not in token[2:]:
            continue
        name, sep, value = token.partition("=")
        candidate = "--" + name[2:].replace("-", "_")
        if name not in known and candidate in known:
            out[i] = candidate + sep + value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered without importing every verb's module
        print(f"contextpool-hf {package_version()}")
        return 0
    args = parser.parse_args(normalize_flags(argv, parser))
    module = importlib.import_module(args._module)
    result = module.run(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
