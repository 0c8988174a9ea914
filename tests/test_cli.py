"""The ``rtvoice`` command: every sub-command dispatches, and bad set-ups fail with a message."""

from __future__ import annotations

import io
import sys
import uuid
from pathlib import Path

import pytest

from gateway import cli
from gateway.cli import build_parser, main


def test_every_command_parses() -> None:
    parser = build_parser()
    for argv in (
        ["serve", "--host", "127.0.0.1", "--port", "8001"],
        ["demo", "--calls", "2", "--lines", "1", "--no-dashboard"],
        ["calls"],
        ["calls", "--json"],
        ["drain", "--replica", "gw-1", "--timeout", "10"],
        ["drain", "--node", "ab12", "--timeout", "0"],
        ["transcript", "abc"],
        ["simulate", "--gateway", "http://127.0.0.1:8000"],
    ):
        assert callable(parser.parse_args(argv).func)


def test_commands_join_ray_without_its_worker_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that answers on stdout (``rtvoice calls --json``) must not get the cluster's
    log lines there: Ray relays them to a driver's stdout (the raylet's warnings included)."""
    import ray

    joined: list[dict[str, object]] = []
    monkeypatch.setattr(ray, "init", lambda **options: joined.append(options))
    assert cli._connect_ray("auto", "rtvoice")
    assert [o.get("log_to_driver") for o in joined] == [False]


def test_serve_without_redis_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RTVOICE_REDIS_URL", raising=False)
    monkeypatch.delenv("RTVOICE_REDIS_HOST", raising=False)
    assert main(["serve"]) == 2
    assert "RTVOICE_REDIS_URL" in capsys.readouterr().err


def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTVOICE_PUBLIC_URL", "ftp://nope")
    assert main(["transcript", "abc"]) == 2
    assert "public_url" in capsys.readouterr().err.lower()


def test_transcript_of_unknown_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTVOICE_ARCHIVE_PATH", str(tmp_path / "a.sqlite3"))
    assert main(["transcript", "no-such-call"]) == 1
    assert "no archived transcript" in capsys.readouterr().err


@pytest.mark.slow  # a real-time call
def test_simulate_dispatches_and_reports_an_unreachable_gateway(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["simulate", "--gateway", "http://127.0.0.1:1", "--calls", "1", "--duration", "1"]
    assert main([*argv, "--answer-timeout", "1"]) == 1
    assert "answered=0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--calls", "0"],
        ["demo", "--lines", "x"],
        ["serve", "--port", "70000"],
        ["drain", "--timeout", "-1", "--replica", "gw"],
    ],
)
def test_out_of_range_arguments_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "not" in capsys.readouterr().err


def test_drain_requires_a_replica_or_a_node(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drain"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drain", "--replica", "a", "--node", "b"])


def test_drain_a_replica_reports_progress_and_its_outcome(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTVOICE_REDIS_URL", redis_url)
    monkeypatch.setenv("RTVOICE_ENVIRONMENT", f"cli{uuid.uuid4().hex[:8]}")
    replica = f"gw-{uuid.uuid4().hex[:6]}"
    assert main(["drain", "--replica", replica, "--timeout", "0"]) == 0  # no live call on it
    assert f"replica {replica}: drained" in capsys.readouterr().out
    assert main(["drain", "--replica", replica, "--undo"]) == 0
    assert "takes new calls again" in capsys.readouterr().out


def test_a_commands_output_is_flushed_before_the_process_tears_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class PipedStdout(io.StringIO):
        flushed = ""

        def flush(self) -> None:
            self.flushed = self.getvalue()

    out = PipedStdout()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(cli, "_calls", lambda args, settings: sys.stdout.write("{}\n") and 0)
    assert main(["calls", "--json"]) == 0
    assert out.flushed == "{}\n"
