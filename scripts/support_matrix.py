"""Run the test zoo (tests/zoo) through each technique and write the support matrix into
README.md, between ``<!-- support-matrix:start -->`` and ``<!-- support-matrix:end -->``.

    python scripts/support_matrix.py                 # every entry, int8 and structural
    python scripts/support_matrix.py --only mlp-batchnorm,two-tower --print

Each cell is what presso did with that model today: "works (drop 0.0012, 2.1x smaller)"
or "refused: <its one-line reason>"; a cell that differs from the zoo's expectation says
what was expected. The models and data are the tests' own builders, so the table and the
tests cannot disagree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from zoo.harness import Outcome, run  # noqa: E402  (the zoo lives with the tests)
from zoo.models import TECHNIQUES, ZOO, Entry  # noqa: E402

START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"

Runner = Callable[..., Outcome]  # (entry, technique, workdir, case) -> Outcome


def cell(entry: Entry, technique: str, outcome: Outcome | None) -> str:
    if outcome is None:
        return "n/a"
    text = outcome.cell()
    if technique == "structural":
        text = f"{entry.structural}: {text}"
    expected = entry.expected(technique)
    if not outcome.matches(expected):
        text += f" (expected: {expected})"
    return text


def rows(names: Iterable[str], techniques: Iterable[str], runner: Runner = run) -> list[list[str]]:
    """One row per zoo entry: its name, what it is, then one cell per technique."""
    techniques = list(techniques)
    out = []
    for name in names:
        entry = ZOO[name]
        with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as tmp:
            workdir = Path(tmp)
            try:
                case = entry.make(workdir)
            except Exception as exc:  # a builder that cannot run here (a missing package)
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                out.append([f"`{name}`", entry.family, *[f"not built: {reason}" for _ in techniques]])
                continue
            cells = []
            for technique in techniques:
                applies = technique == "int8" or entry.structural is not None
                outcome = runner(entry, technique, workdir, case) if applies else None
                cells.append(cell(entry, technique, outcome))
        out.append([f"`{name}`", entry.family, *cells])
        print(f"{name}: {' | '.join(cells)}", file=sys.stderr, flush=True)
    return out


def table(body: list[list[str]], techniques: Iterable[str]) -> str:
    names = {"structural": "structural (slim / lowrank / student)"}
    header = ["model", "architecture", *[names.get(t, t) for t in techniques]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines)


def write_between_markers(readme: Path, text: str) -> None:
    page = readme.read_text()
    if START not in page or END not in page:
        raise SystemExit(f"{readme} lacks the markers {START} and {END}")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated zoo entries (default: all)")
    parser.add_argument("--techniques", default=",".join(TECHNIQUES))
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--print", action="store_true", help="print the table instead of writing README")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise SystemExit(f"unknown zoo entries {unknown}; the zoo has: {', '.join(ZOO)}")
    techniques = args.techniques.split(",")
    text = table(rows(names, techniques), techniques)
    if args.print:
        print(text)
    else:
        write_between_markers(args.readme, text)


if __name__ == "__main__":
    main()
