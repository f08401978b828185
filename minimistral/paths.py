"""Where the course's data lives (the corpus and tokenizer of notebook 10, the trained tiny Mistral, the
benchmark results): the first that exists of the folder MINIMISTRAL_DATA names, `minimistral/data/` in an
installed package (pyproject.toml maps the repository's data/ there), and data/ beside the package in a checkout.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

ENV_VAR = "MINIMISTRAL_DATA"
_MARKER = "tokenizer.model"  # a folder holding this file is taken to be the course's data


def data_dir() -> Path:
    """The course's data folder; FileNotFoundError saying where it looked and how to point at it."""
    setting = os.environ.get(ENV_VAR)
    if setting:
        path = Path(setting).expanduser()
        if not (path / _MARKER).is_file():
            raise FileNotFoundError(f"{ENV_VAR}={setting!r} has no {_MARKER}: point it at a copy of the "
                                    "repository's data/ folder, or unset it to use the installed data")
        return path
    candidates = [Path(str(files(__package__))) / "data", Path(__file__).resolve().parents[1] / "data"]
    for path in candidates:
        if (path / _MARKER).is_file():
            return path
    raise FileNotFoundError(f"the course data ({_MARKER}, kjv.txt.gz, tiny_mistral/) is in none of "
                            f"{[str(p) for p in candidates]}: install the package from a checkout with its data/ "
                            f"folder (pip install .), or set {ENV_VAR} to a copy of that folder")
