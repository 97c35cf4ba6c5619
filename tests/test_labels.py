"""Runner labels and build needs (superci.labels), and why a queued build waits
(superci.waiting): pure functions, no I/O."""

from __future__ import annotations

import platform
import sys

import pytest

from superci import labels
from superci.errors import ConfigError
from superci.interpreters import find_interpreters
from superci.labels import Offer, detect_facts, parse_labels

# --- labels a runner is given ---------------------------------------------------------


def test_a_label_is_key_equals_value_and_a_bare_key_means_true():
    assert parse_labels(["gpu", "os=linux", "cuda=12.4"]) == {
        "gpu": "true", "os": "linux", "cuda": "12.4",
    }  # fmt: skip


def test_labels_are_case_insensitive_and_kept_in_lowercase():
    assert parse_labels(["GPU=A100"]) == {"gpu": "a100"}


def test_labels_from_the_environment_variable_are_split_at_spaces_and_commas():
    assert parse_labels(["gpu, os=linux  big-disk"]) == {
        "gpu": "true", "os": "linux", "big-disk": "true",
    }  # fmt: skip


def test_the_same_label_twice_is_fine_but_a_key_with_two_values_is_an_error():
    assert parse_labels(["gpu", "gpu=true"]) == {"gpu": "true"}
    with pytest.raises(ConfigError, match="label gpu is given twice: true and false"):
        parse_labels(["gpu", "gpu=false"])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("=linux", "label key '' must be 1-32 letters"),
        ("9lives", "label key '9lives' must be 1-32 letters"),
        ("k" * 33, "must be 1-32 letters"),
        ("os=", "label os: value '' must be 1-64"),
        ("os=linux/mint", "label os: value 'linux/mint' must be 1-64"),
        ("os=" + "x" * 65, "label os: value"),
        ("os=.hidden", "starting with a letter or digit"),
    ],
)
def test_a_bad_label_is_an_error_that_says_what_a_label_may_hold(text, problem):
    with pytest.raises(ConfigError) as info:
        parse_labels([text])
    assert problem in str(info.value)


def test_a_runner_takes_a_bounded_number_of_labels():
    with pytest.raises(ConfigError, match=f"at most {labels.MAX_LABELS} labels, got 33"):
        parse_labels([f"k{i}" for i in range(33)])


# --- facts a runner detects -------------------------------------------------------------


def test_detected_facts_are_the_os_the_architecture_and_every_python_found():
    facts = detect_facts(["3.11", "3.12", "3.11"])
    assert facts["os"] == (platform.system().lower(),)
    machine = platform.machine().lower()
    assert facts["arch"] == (labels.ARCH_NAMES.get(machine, machine),)
    assert facts["python"] == ("3.11", "3.12")


def test_the_runner_announces_at_least_its_own_python():
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = find_interpreters(environ={"PATH": "", "HOME": "/nonexistent"})
    assert own in found.versions()
    assert labels.detect_facts(found.versions())["python"] == tuple(found.versions())


def test_architectures_go_by_their_usual_names():
    assert labels.ARCH_NAMES["amd64"] == "x86_64" and labels.ARCH_NAMES["aarch64"] == "arm64"


# --- whether a runner takes a build ----------------------------------------------------

LINUX = Offer({}, {"os": ("linux",), "python": ("3.11", "3.12")})
GPU = Offer({"gpu": "true"}, {"os": ("linux",), "python": ("3.12",)}, exclusive=True)


def test_a_runner_takes_a_build_whose_every_need_it_offers():
    assert LINUX.takes({}) and LINUX.takes({"os": "linux", "python": "3.11"})
    assert not LINUX.takes({"os": "linux", "gpu": "true"})
    assert LINUX.missing({"os": "linux", "gpu": "true", "python": "3.13"}) == {
        "gpu": "true", "python": "3.13",
    }  # fmt: skip


def test_a_given_label_replaces_the_detected_fact_of_its_key():
    pinned = Offer({"python": "3.11"}, {"python": ("3.11", "3.12")})
    assert pinned.takes({"python": "3.11"}) and not pinned.takes({"python": "3.12"})
    assert pinned.merged() == {"python": "3.11"}


def test_an_exclusive_runner_takes_only_builds_that_need_one_of_its_given_labels():
    assert not GPU.takes({})
    assert not GPU.takes({"os": "linux"})  # a detected fact is not its own label
    assert GPU.takes({"gpu": "true", "os": "linux"})


def test_an_offer_reads_as_every_label_with_pythons_joined():
    assert LINUX.merged() == {"os": "linux", "python": "3.11,3.12"}
