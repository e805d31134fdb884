"""A fixed English corpus this project did not write: first sentences of stdlib docstrings.

The sentences are read at run time from the source files of the running Python's standard
library (module docstrings, tokenized without importing or executing anything), in sorted path
order, deduplicated, skipping short or code-like ones. The corpus depends on the Python version
only; :func:`corpus_digest` names it in reports.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import sysconfig
import tokenize
from functools import lru_cache
from pathlib import Path

#: directories of the stdlib that hold tests, vendored code or tools, not module docs
SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "__phello__"}
)
MIN_WORDS = 5
MAX_WORDS = 60
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]])\.(?:\s|$)")


def stdlib_dir() -> Path:
    """The directory of the running Python's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def module_docstring(path: Path) -> str | None:
    """The module docstring of a source file, read with the tokenizer (nothing is executed)."""
    try:
        with open(path, "rb") as f:
            tokens = tokenize.tokenize(io.BytesIO(f.read(65536)).readline)
            for tok in tokens:
                if tok.type in (tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                    continue
                if tok.type != tokenize.STRING:
                    return None
                value = ast.literal_eval(tok.string)
                return value if isinstance(value, str) else None
    except (OSError, SyntaxError, ValueError, tokenize.TokenError, UnicodeDecodeError):
        return None
    return None


def first_sentence(doc: str) -> str | None:
    """The first sentence of the first paragraph, whitespace collapsed; None if unusable."""
    paragraph = doc.strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    found = _SENTENCE_END.search(text)
    sentence = text[: found.start() + 1] if found else text
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if not sentence[0].isalpha() or not sentence.isascii():
        return None
    if any(mark in sentence for mark in (">>>", "::", "==", "{", "}", "$", "@", "\\")):
        return None
    return sentence


def _source_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )


@lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for path in _source_files(stdlib_dir()):
        doc = module_docstring(path)
        sentence = first_sentence(doc) if doc else None
        if sentence and sentence.lower() not in seen:
            seen.add(sentence.lower())
            out.append(sentence)
    return tuple(out)


def stdlib_sentences(limit: int | None = None) -> list[str]:
    """The corpus (the first ``limit`` sentences when given)."""
    sentences = list(_all_sentences())
    return sentences if limit is None else sentences[:limit]


def corpus_digest(sentences: list[str]) -> str:
    """A short hash of a list of sentences, to tell corpora apart in reports."""
    return hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:12]
