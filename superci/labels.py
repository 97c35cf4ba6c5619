"""Runner labels and job needs: what a runner offers, what a build asks for, and whether
they meet. Pure data and decisions; only :func:`detect_facts` looks at the machine.

A runner *offers* labels of two kinds: those its operator gives (``--label gpu``) and the
facts it detects (``os``, ``arch``, ``python``: every version it found). A given label
replaces a detected fact of the same key: the operator knows the machine better than a
guess does (a runner in an emulator, a Python it must not build with).

A build *needs* labels (``needs`` in .superci.toml) and goes only to a runner that offers
every one of them; ``python`` matches when the version is among the runner's versions.
An *exclusive* runner takes only builds that need at least one of its given labels, never
for a detected fact alone (every Linux machine has ``os=linux``): a GPU machine is kept
for GPU work.

Keys and values are case-insensitive (kept in lowercase), so ``gpu=A100`` and ``gpu=a100``
are one label.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from superci.errors import ConfigError

KEY_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
VALUE_RE: Final = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}")
#: Most labels a runner may be given, and most a build may need.
MAX_LABELS: Final = 32
#: Most values one detected fact may have (the Python versions of a machine).
MAX_VALUES: Final = 32
#: The fact that lists every Python version a runner has.
PYTHON: Final = "python"
#: The value of a label given without one (``--label gpu``).
BARE_VALUE: Final = "true"
#: What ``platform.machine()`` calls one architecture, by its usual name.
ARCH_NAMES: Final = {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64", "i386": "x86",
                     "i686": "x86"}  # fmt: skip

#: The keys of detected facts.
FACT_KEYS: Final = ("os", "arch", PYTHON)


def check_key(key: Any) -> str:
    """A label's key: 1-32 of lowercase letters, digits, ``_`` and ``-``, from a letter."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key.lower()):
        raise ConfigError(
            f"label key {key!r:.40} must be 1-32 letters, digits, '_' or '-', "
            "starting with a letter"
        )
    return key.lower()


def check_value(key: str, value: Any) -> str:
    """A label's value: 1-64 of letters, digits and ``._+-``, from a letter or digit."""
    if not isinstance(value, str) or not VALUE_RE.fullmatch(value.lower()):
        raise ConfigError(
            f"label {key}: value {value!r:.70} must be 1-64 letters, digits, '.', '_', '+' "
            "or '-', starting with a letter or digit"
        )
    return value.lower()


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE``, or a bare ``KEY`` meaning ``KEY=true``."""
    key, sep, value = text.partition("=")
    key = check_key(key.strip())
    return key, check_value(key, value.strip() if sep else BARE_VALUE)


def parse_labels(texts: Iterable[str]) -> dict[str, str]:
    """The labels a runner is given (``--label``, repeatable; or ``SUPERCI_LABELS``,
    separated by spaces or commas); one key given two values is an error."""
    labels: dict[str, str] = {}
    for text in texts:
        for piece in re.split(r"[\s,]+", text.strip()):
            if not piece:
                continue
            key, value = parse_label(piece)
            if labels.get(key, value) != value:
                raise ConfigError(f"label {key} is given twice: {labels[key]} and {value}")
            labels[key] = value
    if len(labels) > MAX_LABELS:
        raise ConfigError(f"a runner takes at most {MAX_LABELS} labels, got {len(labels)}")
    return labels


def check_labels(labels: Any, what: str = "labels") -> dict[str, str]:
    """A mapping of labels as data (a build's needs, a runner's labels on the wire)."""
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{what} must be a table of labels, got {labels!r:.60}")
    if len(labels) > MAX_LABELS:
        raise ConfigError(f"{what}: at most {MAX_LABELS} labels, got {len(labels)}")
    checked: dict[str, str] = {}
    for key, value in labels.items():
        key = check_key(key)
        checked[key] = check_value(key, value)
    return checked


def check_facts(facts: Any) -> dict[str, tuple[str, ...]]:
    """A runner's detected facts as data: each key has a list of values."""
    if not isinstance(facts, Mapping) or len(facts) > MAX_LABELS:
        raise ConfigError(f"facts must be a table of at most {MAX_LABELS} keys")
    checked: dict[str, tuple[str, ...]] = {}
    for key, values in facts.items():
        key = check_key(key)
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise ConfigError(f"fact {key}: expected a list of values")
        if len(values) > MAX_VALUES:
            raise ConfigError(f"fact {key}: at most {MAX_VALUES} values, got {len(values)}")
        checked[key] = tuple(dict.fromkeys(check_value(key, v) for v in values))
    return checked


def detect_facts(pythons: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """What a runner tells about its machine: ``os``, ``arch``, and ``python``, the
    versions in ``pythons`` (those the runner found: superci.interpreters)."""
    machine = platform.machine().lower() or "unknown"
    facts = {
        "os": (platform.system().lower() or "unknown",),
        "arch": (ARCH_NAMES.get(machine, machine),),
        PYTHON: tuple(dict.fromkeys(pythons)),
    }
    return check_facts({key: values for key, values in facts.items() if values})


def text(labels: Mapping[str, str]) -> str:
    """``gpu=true os=linux``, for people."""
    return " ".join(f"{key}={value}" for key, value in labels.items())


@dataclass(frozen=True)
class Offer:
    """What one runner offers: given labels, detected facts, and whether it is exclusive."""

    given: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exclusive: bool = False

    def values(self, key: str) -> tuple[str, ...]:
        """What the runner has for ``key``; a given label replaces a detected fact."""
        if key in self.given:
            return (self.given[key],)
        return self.facts.get(key, ())

    def has(self, key: str, value: str) -> bool:
        return value in self.values(key)

    def missing(self, needs: Mapping[str, str]) -> dict[str, str]:
        """The needs this runner does not offer."""
        return {key: value for key, value in needs.items() if not self.has(key, value)}

    def takes(self, needs: Mapping[str, str]) -> bool:
        """Whether a build with these needs may go to this runner."""
        if self.missing(needs):
            return False
        return not self.exclusive or any(key in self.given for key in needs)

    def merged(self) -> dict[str, str]:
        """Every label as people read it: ``python`` values joined by commas."""
        keys = dict.fromkeys([*self.given, *self.facts])
        return {key: ",".join(self.values(key)) for key in keys}
