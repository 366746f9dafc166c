"""An offline training corpus for text students: prose from the docstrings of the Python
standard library and of installed packages.

A student encoder learns little from the minilm example's 240 calibration sentences; it
needs tens of thousands of texts, and nothing may be downloaded. The packages presso
installs with (numpy, scipy, scikit-learn, torch, transformers, ...) carry that much
English prose in their docstrings, and the standard library more (of the kind the example
measures on: its sentences come from the stdlib's docstrings). Their sources are parsed
with :mod:`ast`, never imported (fast, and no import side effects), filtered like the
example's own sentences (:func:`presso.examples.texts.prose_sentences`), deduplicated,
stripped of every sentence the example measures on, and shuffled with a fixed seed: the
same file for the same installed versions. It is written once into presso's cache folder.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import platform
import sys
import sysconfig
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

from presso.cache import cache_root
from presso.examples.texts import prose_sentences
from presso.files import write_text_atomic

# Bump when the selection below changes, so a stale cached corpus is never read.
# 2: the standard library's own sources joined the packages.
CORPUS_VERSION = 2

# The Python standard library's sources, read like a package's (its version is Python's).
# They hold the largest part of the offline prose that reads like the minilm example's
# sentences (which come from the same docstrings and are excluded by text).
STDLIB = "(stdlib)"
# Folders not read: test suites (their docstrings describe test cases, not the library) and
# the packages installed inside the stdlib's tree.
_SKIPPED_FOLDERS = {"test", "tests", "site-packages", "dist-packages", "__pycache__"}

# Import name -> distribution name, for the version in the cache key. Whatever is not
# installed is left out; the order is fixed so the corpus is too. (sympy is left out: its
# docstrings are mostly formulae, and parsing it took a fifth of the time.)
PACKAGES: dict[str, str] = {
    STDLIB: "python",
    "numpy": "numpy",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "pandas": "pandas",
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "huggingface_hub": "huggingface_hub",
    "safetensors": "safetensors",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "optuna": "optuna",
    "pydantic": "pydantic",
    "statsmodels": "statsmodels",
    "networkx": "networkx",
    "joblib": "joblib",
    "jinja2": "jinja2",
    "rich": "rich",
    "yaml": "PyYAML",
    "click": "click",
    "sqlalchemy": "SQLAlchemy",
    "alembic": "alembic",
    "fsspec": "fsspec",
    "filelock": "filelock",
    "platformdirs": "platformdirs",
}


def stdlib_folder() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def package_folder(name: str) -> Path | None:
    """Where the top-level package ``name`` (or :data:`STDLIB`) is installed, found without importing it."""
    if name == STDLIB:
        folder = stdlib_folder()
        return folder if folder.is_dir() else None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_docstrings(source: str) -> Iterator[str]:
    """The docstrings of a module's source: the module's, then every class and function's."""
    try:
        with warnings.catch_warnings():  # invalid escapes in old sources warn when parsed
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a file for another Python version, or NUL bytes
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def package_sentences(folder: Path) -> Iterator[str]:
    """Prose sentences of every ``.py`` file under ``folder``, in sorted path order (none from
    test suites or from packages installed inside it, as in the stdlib's site-packages)."""
    for path in sorted(folder.rglob("*.py")):
        if _SKIPPED_FOLDERS.intersection(path.relative_to(folder).parts[:-1]):
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for doc in source_docstrings(source):
            yield from prose_sentences(doc)


def installed_packages() -> list[tuple[str, str]]:
    """(import name, version) of the :data:`PACKAGES` installed here."""
    found = []
    for name, dist in PACKAGES.items():
        if package_folder(name) is None:
            continue
        if name == STDLIB:
            found.append((name, platform.python_version()))
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "?"
        found.append((name, version))
    return found


def docstring_corpus(packages: Iterable[str], exclude: Iterable[str] = (), seed: int = 0) -> list[str]:
    """Distinct prose sentences of ``packages``' docstrings (case-insensitively distinct), none
    equal to a text of ``exclude``, shuffled with ``seed``."""
    seen = {t.lower() for t in exclude}
    sentences = []
    for name in packages:
        folder = package_folder(name)
        if folder is None:
            continue
        for sent in package_sentences(folder):
            key = sent.lower()
            if key not in seen:
                seen.add(key)
                sentences.append(sent)
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [sentences[i] for i in order]


def corpus_file(
    name: str, exclude: list[str], progress: Callable[[str], None] | None = None, seed: int = 0
) -> Path:
    """The cached corpus file for example ``name`` (one sentence per line), written on first use.

    Its name digests the installed packages' versions, the Python version, the excluded
    texts and :data:`CORPUS_VERSION`: another environment gets its own file."""
    packages = installed_packages()
    h = hashlib.sha1(f"{CORPUS_VERSION} {sys.version_info[:2]} {seed} {packages}".encode())
    h.update("\n".join(exclude).encode())
    path = cache_root() / "corpora" / f"{name}-docstrings-{h.hexdigest()[:16]}.txt"
    if path.is_file():
        return path
    if progress:
        others = sum(p != STDLIB for p, _ in packages)
        stdlib = "the Python standard library and " if others < len(packages) else ""
        progress(f"collecting a training corpus from the docstrings of {stdlib}{others} installed packages")
    sentences = docstring_corpus([p for p, _ in packages], exclude, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(s + "\n" for s in sentences))
    return path
