"""Where the Petals environment is, and how a command gets into it.

petals 2.2.0.post1 needs transformers 4.34 (the project's own environment has 5.x), so Petals
lives in a virtual environment of its own, ``.petals-venv`` in the project (made by
``./set_up_project.sh``; ``SUPERNODE_PETALS_PYTHON`` names another interpreter). The commands
that need petals (``supernode petals-server``'s launcher, ``supernode petals-node --engine
petals``) run there, with this checkout on ``PYTHONPATH``; the code they share with the rest of
the project imports nothing that environment lacks.

Importing this module imports nothing but the standard library.
"""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PETALS_VENV = PROJECT_ROOT / ".petals-venv"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


class PetalsEnvMissing(RuntimeError):
    """The Petals environment is not there (``./set_up_project.sh`` makes it)."""


def petals_python() -> Path:
    """The Petals environment's interpreter; ``PetalsEnvMissing`` if it is not there."""
    named = os.environ.get("SUPERNODE_PETALS_PYTHON")
    python = Path(named) if named else DEFAULT_PETALS_VENV / "bin" / "python"
    if not python.is_file():
        raise PetalsEnvMissing(
            f"no Petals environment at {python}: run ./set_up_project.sh"
            " (or set SUPERNODE_PETALS_PYTHON)"
        )
    return python


def in_petals_env() -> bool:
    """Whether this interpreter can import petals."""
    return find_spec("petals") is not None


def petals_env(offline: bool = True) -> dict[str, str]:
    """The environment of a process in the Petals environment: this checkout importable,
    and (``offline``) the Hugging Face hub not asked for anything."""
    env = dict(os.environ)
    path = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    if offline:
        for name, value in OFFLINE.items():
            env.setdefault(name, value)
    return env


def command(module: str, *args: str) -> list[str]:
    """``python -m module args`` in the Petals environment."""
    return [str(petals_python()), "-m", module, *args]


def exec_in_petals_env(module: str, args: list[str], offline: bool = True) -> None:
    """Replace this process with ``python -m module args`` in the Petals environment (the
    same pid, so whoever started it still holds it)."""
    argv = command(module, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, petals_env(offline))
