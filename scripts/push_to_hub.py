"""Upload a ContextPool checkpoint with its remote code and model card to the Hub.

    python scripts/push_to_hub.py OUTPUT_DIR --repo_id you/contextpool-small [--revision BRANCH] [--private]

Same as `contextpool-hf push`; see `contextpool_hf.hub` for the arguments. The
token comes from --token, HF_TOKEN or `hf auth login`, and is never printed.
"""

from __future__ import annotations

import argparse
import sys

from contextpool_hf import hub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hub.add_arguments(parser)
    return hub.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
