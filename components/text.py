"""The one check every configured string passes: no control characters, no line breaks.

A line break in a value is a new line in a unit, in pgbackrest.conf or in a script: a new option. The
check is shared by the configuration (components/config.py, which names the key) and the renderer's
filters (components/render.py, the last line of defence), so both refuse the same characters.
"""

from __future__ import annotations

import unicodedata

# Unicode "other" (Cc controls such as NUL, LF, CR, TAB, ESC, DEL and C1; Cf format characters such as the
# bidi overrides; Cs surrogates; Co private use; Cn unassigned) and the line and paragraph separators
# U+2028 / U+2029, which some parsers treat as line breaks.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def unsafe_character(value: str, *, allow: str = "") -> str | None:
    """A description of the first refused character in `value` ("U+000A at position 3"), or None.

    `allow` lists characters accepted anyway (a PEM certificate's line feeds). The value itself is never
    part of the description: it may be a secret."""
    for position, char in enumerate(value):
        if char not in allow and unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"U+{ord(char):04X} at position {position}"
    return None


def check_text(value: str, *, allow: str = "") -> None:
    """Raise ValueError when `value` holds a control character or a line break."""
    found = unsafe_character(value, allow=allow)
    if found is not None:
        kinds = "control characters" if not allow else "control characters (but line feeds)"
        raise ValueError(f"must not contain {kinds} or line breaks: found {found}")
