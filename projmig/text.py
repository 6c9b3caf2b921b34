"""Untrusted text (project names, keys, error details) made safe to show: on a terminal, in markdown.

Names and keys come from the source deployment's users: they may hold rich markup (``[bold]``),
markdown table syntax (``|``), newlines or terminal escape sequences. Shown through these functions
they read as the characters they are and cannot restyle, split or forge the output around them.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MARKDOWN_INLINE = set("\\`*_[]|~")  # emphasis, code, links, table cells, strikethrough
_MARKDOWN_LINE_START = set("#+-=>")  # headings, list items, setext underlines, quotes
_HTML = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def printable(text: object) -> str:
    """``text`` on one line, every control or format character (newline, ESC, bidi overrides)
    shown as an escape (``\\n``, ``\\x1b``, ``\\u202e``) instead of acting on the terminal."""
    out = []
    for char in str(text):
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(char)
            out.append(_NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"))
        else:
            out.append(char)
    return "".join(out)


def markdown_text(text: object) -> str:
    """``text`` as literal markdown: one line (see :func:`printable`), inline markdown punctuation
    backslash-escaped (``|`` cannot end a table cell), HTML as entities, and a leading character that
    would open a block (``# heading``, ``- item``, ``1. item``) escaped too."""
    out = []
    for i, char in enumerate(printable(text)):
        if char in _HTML:
            out.append(_HTML[char])
        elif char in _MARKDOWN_INLINE or (i == 0 and char in _MARKDOWN_LINE_START):
            out.append("\\" + char)
        else:
            out.append(char)
    escaped = "".join(out)
    head = escaped.split(".", 1)[0].split(")", 1)[0]
    if head.isdigit() and len(head) < len(escaped):  # "1. " or "1) " would start a numbered list
        escaped = f"{head}\\{escaped[len(head):]}"
    return escaped
