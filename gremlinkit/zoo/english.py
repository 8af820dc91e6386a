"""Real English prose for training and checking SAEs on real models: the Python 3.11 documentation.

Debian's package ``python3.11-doc`` ships the reStructuredText sources of the Python documentation
(PSF License 2.0, permissive; about 1.4 M words with code). `paragraphs` keeps the prose: it drops
code and literal blocks, directives, tables, headings and interactive sessions, and turns roles such
as ``:func:`len``` into their text. Files are split into train and held out by a stable hash of
their path, so the split never depends on the order of a directory listing.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from gremlinkit.zoo.real import MissingSourceError

DEBIAN_PACKAGE = "python3.11-doc"
SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
LICENCE = "PSF License Version 2 (Debian package python3.11-doc, /usr/share/doc/python3.11-doc/copyright)"

_ROLE = re.compile(r":[a-z:]+:`(?:[^`<]*<)?~?!?([^`>]+)>?`")
_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^`>]*>)?`_{1,2}")
_MARKUP = re.compile(r"\*\*|``|\*|`")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::")
# Directives whose bodies are code, tables or markup; the bodies of the rest (function, note, ...) are prose.
_SKIP_BODY = {"code-block", "code", "sourcecode", "doctest", "testcode", "testoutput", "testsetup",
              "testcleanup", "productionlist", "literalinclude", "highlight", "csv-table", "list-table", "table",
              "toctree", "index", "image", "figure", "raw", "only", "include", "audit-event-table", "c:macro"}
_FIELD = re.compile(r"^:[^`:]+:(\s|$)")  # a field-list line (":param x: ..."), not a leading role
_BULLET = re.compile(r"^(?:[-*+]|\d+\.|#\.)\s+")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")


def source_files(root: Path = SOURCES) -> list[Path]:
    if not root.is_dir():
        raise MissingSourceError(f"{root} is missing: install Debian's {DEBIAN_PACKAGE} "
                                 f"(`apt-get install {DEBIAN_PACKAGE}`)")
    return sorted(root.rglob("*.rst.txt"))


def is_heldout(path: Path, root: Path = SOURCES, every: int = 10) -> bool:
    """One file in ``every`` is held out, chosen by a hash of its path inside ``root``."""
    key = str(path.relative_to(root)).encode()
    return int(hashlib.sha256(key).hexdigest(), 16) % every == 0


def paragraphs(text: str) -> list[str]:
    """The prose paragraphs of one reStructuredText file, each on one line."""
    out, current, skip_indent = [], [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:  # inside a literal block or directive body
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if not stripped:
            _flush(out, current)
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (stripped.startswith(("..", ">>>", "...", "|", "+-", "+=", "=")) or _FIELD.match(stripped)
                or _UNDERLINE.match(stripped)
                or _UNDERLINE.match(nxt.strip() or "x")):
            _flush(out, current)
            directive = _DIRECTIVE.match(stripped)
            if stripped.startswith("..") and (directive is None or directive.group(1) in _SKIP_BODY):
                skip_indent = indent  # a comment, target or code-like directive: drop its body too
            continue
        if stripped.endswith("::"):  # a literal block follows
            current.append(stripped[:-2].rstrip() + ("." if stripped[:-2].strip() else ""))
            _flush(out, current)
            skip_indent = indent
            continue
        if _BULLET.match(stripped):  # a list item starts a paragraph of its own
            _flush(out, current)
            stripped = _BULLET.sub("", stripped)
        current.append(stripped)
    _flush(out, current)
    return out


def _flush(out: list[str], current: list[str]) -> None:
    if current:
        para = _MARKUP.sub("", _LINK.sub(r"\1", _ROLE.sub(r"\1", " ".join(current))))
        para = re.sub(r"\s+", " ", para).strip()
        if len(para.split()) >= 5:  # prose, not debris
            out.append(para)
        current.clear()


def corpus(split: str, root: Path = SOURCES) -> list[str]:
    """Every prose paragraph of the ``"train"`` or ``"heldout"`` files, in a fixed order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r}: use 'train' or 'heldout'")
    want = split == "heldout"
    return [p for f in source_files(root) if is_heldout(f, root) == want
            for p in paragraphs(f.read_text(encoding="utf-8"))]
