"""The manager's request checks (issue 16): a mount request is a foreground mount, with absolute
paths and strings where strings belong, or it is refused with a 400 that says what is wrong."""

from __future__ import annotations

import os
import signal

import pytest

from musicfs.manager import MountRequest, Refusal, _ended

GOOD = {"argv": ["--state-dir", "/s", "mount", "--foreground", "--origin", "/m", "/mnt"], "mountpoint": "/mnt",
        "log": "/s/log/x.log", "cwd": "/", "env": {"HOME": "/root"}, "name": "jazz", "restart": True}


def test_a_well_formed_request_is_taken_as_it_is():
    request = MountRequest.from_json(GOOD)
    assert request.argv == GOOD["argv"] and request.restart is True and request.env == {"HOME": "/root"}
    assert MountRequest.from_json({**GOOD, "unknown": 1}).name == "jazz"  # extra keys are ignored


@pytest.mark.parametrize("change, words", [
    ({"argv": ["scan", "--origin", "/m"]}, "foreground mount"),
    ({"argv": ["mount", "/mnt"]}, "foreground mount"),
    ({"argv": "mount --foreground"}, "argv a list of strings"),
    ({"argv": ["mount", "--foreground", 3]}, "argv a list of strings"),
    ({"env": {"A": 1}}, "env an object of strings"),
    ({"env": ["A=1"]}, "env an object of strings"),
    ({"restart": "yes"}, "restart a boolean"),
    ({"mountpoint": "mnt"}, "absolute paths"),
    ({"cwd": "."}, "absolute paths"),
    ({"log": 5}, "strings"),
])
def test_a_malformed_request_is_refused_with_why(change, words):
    with pytest.raises(Refusal) as refused:
        MountRequest.from_json({**GOOD, **change})
    assert refused.value.status == 400 and words in str(refused.value)


@pytest.mark.parametrize("body", [None, [], "mount", 5])
def test_a_body_that_is_no_object_is_refused(body):
    with pytest.raises(Refusal, match="JSON object"):
        MountRequest.from_json(body)


def test_a_request_missing_a_field_is_refused():
    with pytest.raises(Refusal, match="bad mount request"):
        MountRequest.from_json({k: v for k, v in GOOD.items() if k != "mountpoint"})


def test_how_a_child_ended_is_said_plainly():
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    assert _ended(os.waitpid(pid, 0)[1]) == "exit 3"
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    assert _ended(os.waitpid(pid, 0)[1]) == "SIGKILL"
