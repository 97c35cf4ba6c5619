"""Text from commits and runners made safe to print on a terminal.

Test names, failure messages, branch and host names come from code superci runs and
from runners it does not control; printed as they are, an escape sequence in them could
rewrite the screen, retitle the window, hide a failure or forge a line. Every such
text goes through :func:`printable` on its way to a terminal (``show``, ``status``,
``up``), so the rule lives in one place.
"""

from __future__ import annotations

import re

#: Escape sequences as terminals parse them: CSI (``ESC [`` or the 8-bit ``0x9b``) up
#: to its final byte; OSC, DCS, SOS, PM and APC strings up to their terminator (BEL or
#: ST) or the end of the text; any other two-character ``ESC x``.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[\x20-\x7e]?",
    re.DOTALL,
)
#: Whitespace controls that would break a line or a table column: shown as one space.
_BREAKS = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]+")
#: What is left of C0 and C1, DEL, and the bidirectional overrides that make text read
#: differently from what it is.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` on one line with no escape sequence and no control character left."""
    return _CONTROLS.sub("", _BREAKS.sub(" ", _SEQUENCE.sub("", text)))
