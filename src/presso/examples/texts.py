"""An offline English text set: sentences from the Python standard library's docs.

No text corpus ships inside a package we may depend on, and nothing may be fetched at
run time; the docstrings of stdlib modules are real, varied English prose that every
Python installation has. The selection is deterministic for a given Python version.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from collections.abc import Iterator

import numpy as np

_MODULES = (
    "argparse",
    "asyncio",
    "bisect",
    "calendar",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "gettext",
    "gzip",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookies",
    "imaplib",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "mimetypes",
    "multiprocessing",
    "numbers",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_LIKE = re.compile(r"[=<>{}\[\]`|\\]|>>>|\w\(|::|__|\.\.\.")


# Modules whose import has side effects (opens a browser, prints, needs a display) or is slow.
_SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "venv",
    "pydoc_data",
    "test",
    "xxsubtype",
    "xxlimited",
}


def all_stdlib_modules() -> tuple[str, ...]:
    """Every public top-level stdlib module (a larger pool of sentences, e.g. for distillation)."""
    import sys

    return tuple(sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in _SKIP))


def _docstrings(module_name: str):
    try:
        with warnings.catch_warnings():  # deprecated stdlib aliases warn when touched
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
            docs = _module_docs(module)
    except Exception:  # an optional stdlib part missing on this build
        return
    yield from docs


def _module_docs(module) -> list[str]:
    docs = [inspect.getdoc(module) or ""]
    for _, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) == module.__name__ and (
            inspect.isclass(obj) or inspect.isfunction(obj)
        ):
            docs.append(inspect.getdoc(obj) or "")
    return docs


def prose_sentences(doc: str, min_words: int = 6, max_words: int = 40) -> Iterator[str]:
    """The prose sentences of a docstring: ``min_words`` to ``max_words`` words, capitalised,
    ending with a full stop, nothing that looks like code (operators, brackets, calls, doctests)."""
    for para in doc.split("\n\n"):
        text = " ".join(para.split())
        for sent in _SENTENCE_END.split(text):
            words = sent.split()
            if (
                min_words <= len(words) <= max_words
                and sent[0].isupper()
                and sent.endswith(".")
                and not _CODE_LIKE.search(sent)
            ):
                yield sent


def stdlib_sentences(
    n: int = 800, seed: int = 0, min_words: int = 6, max_words: int = 40, modules: tuple[str, ...] = _MODULES
) -> list[str]:
    """``n`` distinct prose sentences from the docstrings of ``modules``, shuffled with ``seed``."""
    seen, sentences = set(), []
    for name in modules:
        for doc in _docstrings(name):
            for sent in prose_sentences(doc, min_words, max_words):
                if sent.lower() not in seen:
                    seen.add(sent.lower())
                    sentences.append(sent)
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [sentences[i] for i in order[:n]]
