from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from mlp_core.errors import ConfigError
from mlp_obs.log import LEVEL_ENV, bind_context, configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_CONFIGURE_LOGGING", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def read_lines(path: Path) -> list[dict]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_json_file_carries_bound_context(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)

    with bind_context(run_id="r-1", request_id="q-9", model="penguins"):
        get_logger("mlp.test", component="trainer").info("epoch finished", epoch=3, loss=0.25)
    get_logger("mlp.test").info("outside")

    inside, outside = read_lines(log_file)
    assert inside["event"] == "epoch finished"
    assert inside["level"] == "info"
    assert inside["logger"] == "mlp.test"
    assert (inside["run_id"], inside["request_id"], inside["model"]) == ("r-1", "q-9", "penguins")
    assert (inside["component"], inside["epoch"], inside["loss"]) == ("trainer", 3, 0.25)
    assert inside["timestamp"].endswith("Z")
    assert "run_id" not in outside


def test_leaving_a_nested_context_restores_the_outer_values(tmp_path: Path) -> None:
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)
    log = get_logger("mlp.test")

    with bind_context(request_id="outer", model="penguins"):
        with bind_context(request_id="inner"):
            log.info("inner")
        log.info("outer")
    log.info("after")

    inner, outer, after = read_lines(log_file)
    assert (inner["request_id"], inner["model"]) == ("inner", "penguins")
    assert (outer["request_id"], outer["model"]) == ("outer", "penguins")
    assert "request_id" not in after and "model" not in after


def test_a_block_that_raises_still_restores_the_outer_values(tmp_path: Path) -> None:
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)
    log = get_logger("mlp.test")

    with bind_context(request_id="outer"):
        with pytest.raises(ValueError), bind_context(request_id="inner"):
            raise ValueError("a failed request")
        log.info("outer")
    log.info("after")

    outer, after = read_lines(log_file)
    assert outer["request_id"] == "outer"
    assert "request_id" not in after


def test_concurrent_tasks_each_log_their_own_context(tmp_path: Path) -> None:
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)
    log = get_logger("mlp.test")

    async def request(request_id: str) -> None:
        with bind_context(request_id=request_id):
            await asyncio.sleep(0)  # the other task binds its id meanwhile
            log.info("answered", expected=request_id)

    async def both() -> None:
        await asyncio.gather(request("a"), request("b"))

    asyncio.run(both())
    lines = read_lines(log_file)
    assert sorted(line["request_id"] for line in lines) == ["a", "b"]
    assert all(line["request_id"] == line["expected"] for line in lines)


def test_standard_library_loggers_reach_the_json_file(tmp_path: Path) -> None:
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)

    with bind_context(request_id="q-1"):
        logging.getLogger("uvicorn.error").warning("port %d busy", 8000, extra={"attempt": 2})

    (line,) = read_lines(log_file)
    assert line["logger"] == "uvicorn.error"
    assert line["event"] == "port 8000 busy"
    assert line["level"] == "warning"
    assert line["request_id"] == "q-1"
    assert line["attempt"] == 2


@pytest.mark.parametrize(("env_level", "debug_shown"), [("DEBUG", True), ("warning", False)])
def test_level_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_level: str, debug_shown: bool
) -> None:
    monkeypatch.setenv(LEVEL_ENV, env_level)
    log_file = tmp_path / "run.jsonl"
    configure_logging(json_file=log_file, console=False)

    get_logger("mlp.test").debug("detail")
    logging.getLogger("grpc").debug("wire detail")
    get_logger("mlp.test").error("failure")

    events = [line["event"] for line in read_lines(log_file)]
    expected = ["detail", "wire detail", "failure"] if debug_shown else ["failure"]
    assert events == expected


def test_argument_level_wins_over_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LEVEL_ENV, "DEBUG")
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)
    get_logger().debug("hidden")
    get_logger().info("shown")
    assert [line["event"] for line in read_lines(log_file)] == ["shown"]


def test_unknown_level_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LEVEL_ENV, "chatty")
    with pytest.raises(ConfigError, match="chatty"):
        configure_logging(console=False)


def test_reconfiguring_does_not_duplicate_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    configure_logging("INFO", json_file=first)
    configure_logging("INFO", json_file=second)

    logger = get_logger("mlp.test")
    logger.info("once", answer=42)
    logging.getLogger("mlflow").warning("foreign once")

    assert first.read_text() == ""
    assert [line["event"] for line in read_lines(second)] == ["once", "foreign once"]
    console = capsys.readouterr().err
    assert console.count("once") == 2  # "once" and "foreign once", one line each
    assert "answer=42" in console
    assert "\x1b[" not in console  # not a terminal: no colour codes


def test_json_console(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_console=True)
    get_logger("mlp.test").info("to collector", model="m")
    (line,) = capsys.readouterr().err.splitlines()
    parsed = json.loads(line)
    assert (parsed["event"], parsed["model"]) == ("to collector", "m")


def test_exception_traceback_is_structured_in_json(tmp_path: Path) -> None:
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)

    def fail() -> None:
        raise ValueError("bad batch")

    try:
        fail()
    except ValueError:
        get_logger("mlp.test").exception("step failed", step=7)
    try:
        fail()
    except ValueError:
        logging.getLogger("ultralytics").exception("foreign failure")

    for line in read_lines(log_file):
        (exception,) = line["exception"]
        assert exception["exc_type"] == "ValueError"
        assert exception["exc_value"] == "bad batch"
        assert any(frame["name"] == "fail" for frame in exception["frames"])
        assert line["level"] == "error"


def test_libraries_with_their_own_handlers_are_routed_through_mlp(tmp_path: Path) -> None:
    importlib.import_module("mlflow")  # configures its loggers: own handler, no propagation

    mlflow_logger = logging.getLogger("mlflow")
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)

    mlflow_logger.warning("from mlflow")
    logging.getLogger("alembic").info("below alembic's own WARNING level")

    assert mlflow_logger.handlers == []
    assert [(line["logger"], line["event"]) for line in read_lines(log_file)] == [
        ("mlflow", "from mlflow")
    ]

    configure_logging("WARNING", json_file=log_file, console=False)
    mlflow_logger.info("hidden: mlflow's own INFO level must not override ours")
    mlflow_logger.warning("shown")
    assert [line["event"] for line in read_lines(log_file)][-1] == "shown"
    assert len(read_lines(log_file)) == 2


# Lines as MLflow, alembic and uvicorn write them in `mlp train`, `mlp export` and `mlp serve`.
CHATTER = [
    ("alembic.runtime.plugins", "setup plugin alembic.autogenerate.schemas"),
    ("mlflow.utils.uv_utils", "Detected uv project: found uv.lock and pyproject.toml"),
    ("uvicorn.error", "Started server process [42]"),
]


def test_other_libraries_info_lines_are_debug_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "run.jsonl"
    configure_logging("INFO", json_file=log_file, console=False)
    for name, message in CHATTER:
        logging.getLogger(name).info(message)
    get_logger("mlp_train.run").info("ours")
    logging.getLogger("mlp_serve.runtime").info("ours too")
    logging.getLogger("mlflow.utils.environment").warning("a real problem")
    logging.getLogger("uvicorn.error").error("port busy")

    rows = read_lines(log_file)
    assert [(r["logger"], r["level"], r["event"]) for r in rows] == [
        ("mlp_train.run", "info", "ours"),
        ("mlp_serve.runtime", "info", "ours too"),
        ("mlflow.utils.environment", "warning", "a real problem"),
        ("uvicorn.error", "error", "port busy"),
    ]


def test_debug_shows_the_chatter_as_debug_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(LEVEL_ENV, "DEBUG")
    log_file = tmp_path / "run.jsonl"
    configure_logging(json_file=log_file, console=False)
    # Not alembic: it keeps its own WARNING level once MLflow has set it, at DEBUG too.
    chatter = CHATTER[1:]
    with caplog.at_level(logging.DEBUG):
        for name, message in chatter:
            logging.getLogger(name).info(message)

    rows = read_lines(log_file)
    assert [(r["logger"], r["level"], r["event"]) for r in rows] == [
        (name, "debug", message) for name, message in chatter
    ]
    assert "_mlp_as_debug" not in rows[0]
    # Other handlers on the root (pytest's here) still get the record as the library wrote it.
    assert [r.levelname for r in caplog.records] == ["INFO"] * len(chatter)


def test_library_levels_are_set_per_logger_prefix(tmp_path: Path) -> None:
    log_file = tmp_path / "run.jsonl"
    configure_logging(
        "INFO",
        json_file=log_file,
        console=False,
        library_levels={"grpc": logging.INFO, "mlflow.store": logging.ERROR},
    )
    logging.getLogger("grpc._server").info("wanted at INFO")
    logging.getLogger("grpcio").info("another library: still DEBUG")
    logging.getLogger("mlflow.store.db.utils").warning("quiet below ERROR")
    logging.getLogger("mlflow.tracking").warning("mlflow's default: WARNING")

    assert [r["event"] for r in read_lines(log_file)] == [
        "wanted at INFO",
        "mlflow's default: WARNING",
    ]
