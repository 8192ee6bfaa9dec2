"""`mlp predict`'s user mistakes end in a ServingError that says what to do, not a traceback."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from mlp_core.errors import ServingError
from mlp_serve.cli import predict


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    predict.configure(parser)
    return parser.parse_args(list(argv))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("option", ["--csv", "--image"])
def test_a_missing_input_file_is_named(option: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.file"
    with pytest.raises(ServingError, match=rf"{option} .*nope\.file: no such file"):
        predict.run(_args("penguins", option, str(missing)))


def test_no_server_at_the_url_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ServingError, match=f"cannot reach the server at {url}") as caught:
        predict.run(_args("penguins", "--json", '[{"a": 1}]', "--url", url, "--timeout", "5"))
    assert "mlp serve" in caught.value.hint
