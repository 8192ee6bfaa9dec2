"""``python -m mlp_serve REPO [--http-port ...]``: the server, with ``mlp serve``'s arguments."""

from __future__ import annotations

import sys

from mlp_serve.cli.serve import build_parser, run

if __name__ == "__main__":
    sys.exit(run(build_parser().parse_args()))
