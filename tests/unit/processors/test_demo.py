"""`make demo` checks its settings before anything starts, and stops what it started."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.tools import demo


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The devstack commands the demo runs (none really run); the stack is never up."""
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    # main() sets these in os.environ for the stack it starts; not in the test process.
    for name in demo.DEMO_DELAYS:
        monkeypatch.setenv(name, demo.DEMO_DELAYS[name])
    ran: list[str] = []

    def devstack(command: str) -> int:
        ran.append(command)
        return 0

    monkeypatch.setattr(demo, "devstack", devstack)
    monkeypatch.setattr(demo, "stack_ready", lambda settings: False)
    return ran


@pytest.mark.parametrize("value", ["", "soon", "-5", "nan"])
def test_a_bad_demo_duration_is_explained_before_anything_starts(
    value: str,
    calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OMNI_DEMO_SECONDS", value)
    assert demo.main() == 2
    assert calls == []
    err = capsys.readouterr().err
    assert f"OMNI_DEMO_SECONDS={value!r} is not a number of seconds" in err
    assert "OMNI_DEMO_SECONDS=60 make demo" in err and "unset it" in err
    assert "Traceback" not in err


def test_a_bad_pipeline_setting_is_named_before_anything_starts(
    calls: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMNI_PARTITIONS", "eight")
    assert demo.main() == 2
    assert calls == []
    err = capsys.readouterr().err
    assert "OMNI_PARTITIONS" in err and "Fix or unset" in err


def test_demo_duration() -> None:
    assert demo.demo_seconds({}) == 0.0
    assert demo.demo_seconds({"OMNI_DEMO_SECONDS": "60"}) == 60.0
    assert demo.demo_seconds({"OMNI_DEMO_SECONDS": "0"}) == 0.0


def test_a_failure_after_the_stack_started_stops_it(
    calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(settings: object, seconds: float) -> None:
        raise RuntimeError("lost the broker")

    monkeypatch.setattr(demo, "play", broken)
    with pytest.raises(RuntimeError, match="lost the broker"):
        demo.main()
    assert calls == ["up", "down"]


def test_a_failed_start_stops_what_it_started(
    calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "devstack", lambda command: calls.append(command) or 1)
    assert demo.main() == 1
    assert calls == ["up", "down"]


def test_ctrl_c_stops_the_stack_and_exits_cleanly(
    calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(settings: object, seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "play", interrupted)
    assert demo.main() == 0
    assert calls == ["up", "down"]
