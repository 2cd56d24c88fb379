"""The virtualenv of variant (e), Quix Streams: ``.cache/bench-venv-quix``, made on demand.

quixstreams pins confluent-kafka, pydantic and pydantic-settings below this
repo's pins, so it cannot share ``.venv``. :func:`ensure_quix_venv` creates the
venv with the interpreter running the bench, installs
``bench/quix-requirements.txt``, then this checkout's three projects without
their dependencies (:data:`LOCAL_PROJECTS`: contract, worker, bench; so
``processors``, ``schemas`` and ``bench`` import as in ``.venv``), checks the
imports, and writes a stamp holding :func:`stamp_key`. While the stamp matches,
it does nothing; when the requirements file (or the Python version) changes,
the venv is made afresh. A lock file keeps two benches in this checkout from
building it at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from devstack.kafka import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "bench" / "quix-requirements.txt"
VENV_DIR = REPO_ROOT / ".cache" / "bench-venv-quix"
STAMP_NAME = ".bench-stamp"
#: What the venv must import for ``python -m bench.quix_loop``.
IMPORT_CHECK = "import quixstreams, bench.quix_loop"
PIP_TIMEOUT_S = 900.0
#: Installed editable, without dependencies (quix-requirements.txt has them), as in .venv.
LOCAL_PROJECTS = ("contract", ".", "bench")


class QuixEnvError(RuntimeError):
    """The Quix Streams venv could not be made; the message says what failed and what to do."""


def stamp_key(requirements: bytes, python_version: str) -> str:
    """What the stamp holds: the requirements file's hash and the interpreter's version."""
    digest = hashlib.sha256(requirements).hexdigest()
    # The projects are part of the key: a venv made for another layout is made afresh.
    projects = ",".join(LOCAL_PROJECTS)
    return f"requirements-sha256={digest} python={python_version} projects={projects}\n"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def is_current(venv: Path, key: str) -> bool:
    stamp = venv / STAMP_NAME
    try:
        return stamp.read_text() == key and venv_python(venv).exists()
    except OSError:
        return False


def ensure_quix_venv(
    venv: Path = VENV_DIR,
    requirements: Path = REQUIREMENTS,
    python: str = sys.executable,
    say: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> Path:
    """The venv's python, after creating or refreshing the venv if its stamp is stale."""
    try:
        key = stamp_key(requirements.read_bytes(), platform.python_version())
    except OSError as exc:
        raise QuixEnvError(f"cannot read {requirements}: {exc}") from exc
    if is_current(venv, key):
        return venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another bench may be building it right now
        if is_current(venv, key):
            return venv_python(venv)
        say(f"making the Quix Streams venv {venv} from {requirements.name} (once; ~1 min)")
        _build(venv, requirements, python)
        (venv / STAMP_NAME).write_text(key)
    return venv_python(venv)


def _build(venv: Path, requirements: Path, python: str) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    vpy = str(venv_python(venv))
    pip = [vpy, "-m", "pip", "install", "-q"]
    steps = [
        ("create the venv", [python, "-m", "venv", str(venv)]),
        ("install the pinned requirements", [*pip, "-r", str(requirements)]),
        (
            "install this repo (no deps)",
            [*pip, "--no-deps", *(a for p in LOCAL_PROJECTS for a in ("-e", str(REPO_ROOT / p)))],
        ),
        ("import quixstreams and bench.quix_loop", [vpy, "-c", IMPORT_CHECK]),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for what, argv in steps:
        try:
            done = subprocess.run(
                argv,
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise QuixEnvError(_failed(what, argv, str(exc), venv)) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().splitlines()
            raise QuixEnvError(
                _failed(what, argv, f"exit {done.returncode}:\n" + "\n".join(output[-25:]), venv)
            )


def _failed(what: str, argv: list[str], detail: str, venv: Path) -> str:
    return (
        f"Quix Streams venv: could not {what} ({' '.join(argv)}): {detail}\n"
        f"What to do: fix the cause above (network or package index for pip; the python3 "
        f"venv module; a pin in {REQUIREMENTS.relative_to(REPO_ROOT)} that no longer "
        f"resolves), then run the bench again; it retries from scratch ({venv} is only kept "
        f"once complete). Or leave variant e out: --variants a,b,c,d."
    )


if __name__ == "__main__":
    print(ensure_quix_venv())
