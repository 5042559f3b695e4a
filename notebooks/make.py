"""Builds the notebooks (`*.ipynb`, outputs stripped) from their sources in `src/`.

A source is Python in the "percent" layout: cells start with `# %%` (code) or
`# %% [markdown]` (Markdown, each line prefixed with `# `). Run `python notebooks/make.py`
after editing a source; the test suite fails when a notebook and its source differ.
Needs only the standard library.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cells(text: str) -> list[dict]:
    out: list[dict] = []
    kind, lines = None, []

    def flush() -> None:
        if kind is None:
            return
        body = lines[:]
        while body and not body[-1].strip():
            body.pop()
        if kind == "markdown":
            body = [l[2:] if l.startswith("# ") else l.lstrip("#") for l in body]
        source = [l + "\n" for l in body]
        if source:
            source[-1] = source[-1].rstrip("\n")
        cell = {"cell_type": kind, "metadata": {}, "source": source}
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        out.append(cell)

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind = "markdown" if "[markdown]" in line else "code"
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    return out


def notebook(src: Path) -> str:
    nb = {
        "cells": cells(src.read_text()),
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    for i, c in enumerate(nb["cells"]):
        c["id"] = f"{src.stem}-{i}"
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for src in sorted((HERE / "src").glob("*.py")):
        target = HERE / f"{src.stem}.ipynb"
        text = notebook(src)
        if check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
    if stale:
        print("notebooks out of date with src/ (run python notebooks/make.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
