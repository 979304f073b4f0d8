"""Subject, site and session names: which can be used in file names and shown as they are.

Names come from folder names in the rig folder, typed by whoever set up the session, so they may
hold anything a file system allows. A name becomes part of file names (the NWB file, pictures),
log lines, terminal output and notification titles; ``is_safe_name`` says whether it can, and
``printable`` shows anything else visibly.
"""

from __future__ import annotations

import re
import unicodedata

_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")


def is_safe_name(value: str) -> bool:
    """True when a subject/session/site name can be used in a file name, a log line, a terminal
    and a notification title as it is: it cannot escape a folder, and it holds no control or
    format characters (a newline would forge lines, an ESC sequence would drive the terminal)."""
    return (bool(_SAFE_NAME.match(value)) and value not in (".", "..") and value.strip() == value
            and not any(unicodedata.category(c) in _UNPRINTABLE for c in value)
            and len(value.encode("utf-8", "surrogateescape")) <= 200)


# Unicode categories never allowed in names: controls, format characters (bidi overrides among
# them), line and paragraph separators, surrogates and unassigned code points.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def printable(text: str) -> str:
    """``text`` safe for a terminal or a one-line message: every control or format character
    (ESC, newline, bidi overrides...) shown as a visible escape such as ``\\x1b``."""
    if all(unicodedata.category(c) not in _UNPRINTABLE for c in text):
        return text
    return "".join(c if unicodedata.category(c) not in _UNPRINTABLE else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)
