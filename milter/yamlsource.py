"""YAML loading that remembers where every value came from.

Configuration and policy errors must name the file, line, column and key path
(``rules[3].then[0].route``), so administrators fix the right line the first time.
PyYAML's composer keeps marks on nodes; we keep them beside the plain Python data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


class SourceError(Exception):
    """An error located in a YAML file: ``file:line:col: message``."""

    def __init__(self, file: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{file}:{line}:{col}: {message}")
        self.file, self.line, self.col, self.message = file, line, col, message


def format_path(path: KeyPath) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass
class Source:
    """Plain data from one YAML file plus the (line, col) of every key path, 1-based."""

    file: str
    data: Any
    marks: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)  # values
    key_marks: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)  # mapping keys

    def where(self, path: KeyPath, at_key: bool = False) -> tuple[int, int]:
        """The nearest known position for ``path`` (walking up to its parents)."""
        p = tuple(path)
        if at_key and p in self.key_marks:
            return self.key_marks[p]
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get((), (1, 1))

    def error(self, path: KeyPath, message: str, at_key: bool = False) -> SourceError:
        """An error at the value of ``path`` (or at its key, for unknown keys)."""
        line, col = self.where(path, at_key)
        key = format_path(path)
        return SourceError(self.file, line, col, f"{key}: {message}" if key else message)


def _convert(
    node: yaml.Node,
    path: KeyPath,
    marks: dict[KeyPath, tuple[int, int]],
    file: str,
    key_marks: dict[KeyPath, tuple[int, int]],
) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            key = (
                yaml.safe_load(yaml.serialize(k))
                if not isinstance(k, yaml.ScalarNode)
                else _scalar(k, file)
            )
            if isinstance(key, (dict, list)):
                raise SourceError(
                    file,
                    k.start_mark.line + 1,
                    k.start_mark.column + 1,
                    "a key must be a plain value",
                )
            skey = str(key)
            if skey in out:
                raise SourceError(
                    file, k.start_mark.line + 1, k.start_mark.column + 1, f"duplicate key {skey!r}"
                )
            key_marks[(*path, skey)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            out[skey] = _convert(v, (*path, skey), marks, file, key_marks)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(v, (*path, i), marks, file, key_marks) for i, v in enumerate(node.value)]
    return _scalar(node, file)


def _scalar(node: yaml.Node, file: str) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise SourceError(
            file, node.start_mark.line + 1, node.start_mark.column + 1, str(exc).splitlines()[0]
        ) from None
    finally:
        loader.dispose()


def load_text(text: str, file: str) -> Source:
    """Parse YAML text; syntax errors become a SourceError with position."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SourceError(file, line, col, f"YAML syntax: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise SourceError(file, 1, 1, f"YAML: {exc}") from None
    marks: dict[KeyPath, tuple[int, int]] = {}
    key_marks: dict[KeyPath, tuple[int, int]] = {}
    if node is None:
        return Source(file, None, {(): (1, 1)})
    return Source(file, _convert(node, (), marks, file, key_marks), marks, key_marks)


def load_file(path: str | Path) -> Source:
    """Read and parse a YAML file; unreadable files become a SourceError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SourceError(str(p), 1, 1, f"cannot read: {reason}") from None
    return load_text(text, str(p))
