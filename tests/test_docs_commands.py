"""Every command the README, docs/*.md and examples/ show does what their text says.

The commands are read from the documents themselves (fenced shell blocks of the Markdown files, the module
docstrings of examples/*.py): every query they give (``--query``, ``vlmedge send set_queries/add_query/...``,
the default query of a bare ``vlmedge``) must parse as a command, and every one shown against the default source
(the built-in synthetic tabletop) must be found there by the embedded model, on the object the ground truth of the
stream says. A document that adds a query against the default stream is checked without touching this file; one
that needs something the stream cannot show has to be listed in NOT_ON_THE_DEFAULT_STREAM with the reason.

The walkthrough of examples/README.md is replayed as written (its addresses moved to free ports, so a running
vlmedge is not disturbed): `vlmedge run`, the control loop, `vlmedge send set_queries "the blue ball"` -- and "the
robot now follows the ball" is checked on what the loop prints.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlmedge.defaults import DEFAULT_QUERY, DEFAULT_SOURCE
from vlmedge.language import NounPhrase, Quantity, Relation, read_command
from vlmedge.language.geometry import DIRECTIONAL

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# Queries shown against the default source that the stream cannot show, and why.
NOT_ON_THE_DEFAULT_STREAM = {
    "the bottle next to my mug": "follows `vlmedge send teach \"my mug\" X0 Y0 X1 Y1`: what it finds depends on the "
                                 "box the user teaches",
}
MIN_AREA = 1500  # px: an object of the stream smaller than this (mostly hidden) is not asked for
FRAMES, EVERY = 150, 5  # 30 groundings over 5 s of the default stream


@dataclass(frozen=True)
class Shown:
    """One query a document shows: where, on which source, and the whole command line."""

    where: str  # file:line
    query: str
    source: str
    line: str


# ----------------------------------------------------------------------------------------- extraction

def _shell_blocks() -> list[tuple[str, list[tuple[int, str]]]]:
    """(file, [(line number, command line)]) per shell block: fenced blocks of the Markdown files, the indented
    command lines of each example's docstring."""
    out = []
    for path in MARKDOWN:
        text = path.read_text()
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
            if m.group(1) not in ("", "bash", "sh", "shell", "console"):
                continue
            first = text[:m.start(2)].count("\n") + 1
            out.append((path.name if path.parent == ROOT else f"{path.parent.name}/{path.name}",
                        [(first + i, line) for i, line in enumerate(m.group(2).splitlines())]))
    for path in EXAMPLES:
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
        lines = []
        for i, line in enumerate(doc.splitlines()):
            cmd = line.split("CLI:", 1)[-1].strip()  # "The same as the CLI:  vlmedge run ..."
            if cmd.startswith(("vlmedge", "python3 examples/", "python examples/")):
                lines.append((i + 1, cmd))
        out.append((f"examples/{path.name}", lines))
    return out


def _argv(line: str) -> list[str]:
    try:
        argv = shlex.split(line, comments=True)
    except ValueError:
        return []
    return [a for a in argv if a != "&"]


def _option(argv: list[str], *names: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in names]


_SEND_OPTIONS = ("--timeout", "--server-key", "--client-key", "--curve-keys", "--client-name")


def _queries(argv: list[str]) -> list[str]:
    """The queries one command line gives."""
    if not argv:
        return []
    if argv[0] == "vlmedge" and argv[1:2] == ["send"]:
        words, skip = [], False
        for a in argv[2:]:
            if skip:
                skip = False
            elif a in _SEND_OPTIONS or a == "--json":
                skip = True
            else:
                words.append(a)
        for raw in _option(argv, "--json"):
            req = json.loads(raw)
            return list(req.get("queries", ())) + ([req["query"]] if "query" in req else [])
        if words and "://" in words[0]:
            words = words[1:]
        op, rest = (words[0], words[1:]) if words else ("", [])
        return {"set_queries": rest, "add_query": rest, "set_threshold": rest[1:]}.get(op, [])
    runs = argv[0] == "vlmedge" and (len(argv) == 1 or argv[1] == "run" or argv[1].startswith("-"))
    given = _option(argv, "--query", "-q")
    if given or not runs:
        return given
    return [DEFAULT_QUERY]


def _source(argv: list[str]) -> str | None:
    """The source a command line runs on, None when it runs nothing (send, subscribe, a client example)."""
    if argv[:1] == ["vlmedge"] and (len(argv) == 1 or argv[1] == "run" or argv[1].startswith("-")):
        return (_option(argv, "--source", "-s") or [DEFAULT_SOURCE])[-1]
    if len(argv) > 1 and argv[1].endswith("webcam_demo.py"):
        return (_option(argv, "--source") or ["0"])[-1]  # the example's own default: camera 0
    return None


def shown_queries() -> list[Shown]:
    """Every query of every shell block. A block's queries go to the source its `vlmedge run` (or webcam demo)
    line names; a block without one talks to the `vlmedge` of the quick start: the default source."""
    out = []
    for name, lines in _shell_blocks():
        # a trailing backslash continues the line
        joined, buf, start = [], "", 0
        for n, line in lines:
            buf, start = (buf + " " + line.rstrip("\\"), start) if buf else (line.rstrip("\\"), n)
            if not line.rstrip().endswith("\\"):
                joined.append((start, buf))
                buf = ""
        parsed = [(n, line, _argv(line)) for n, line in joined]
        block_source = next((s for _, _, a in parsed if (s := _source(a)) is not None), DEFAULT_SOURCE)
        for n, line, argv in parsed:
            source = _source(argv) or block_source
            out += [Shown(f"{name}:{n}", q, source, line.strip()) for q in _queries(argv)]
    return out


SHOWN = shown_queries()
ON_DEFAULT = sorted({s.query for s in SHOWN if s.source == DEFAULT_SOURCE} - set(NOT_ON_THE_DEFAULT_STREAM))


def test_the_documents_show_commands():
    # the extraction itself: the quick start, the walkthrough and the examples are all seen
    where = {s.where.split(":")[0] for s in SHOWN}
    assert {"README.md", "examples/README.md", "docs/PROTOCOL.md", "examples/webcam_demo.py",
            "examples/robot_control_loop.py"} <= where, where
    assert {DEFAULT_QUERY, "the blue ball", "the bottle left of the purple bottle", "how many bottles"} <= set(
        ON_DEFAULT), ON_DEFAULT
    # a camera example is not asked of the synthetic stream
    assert any(s.source != DEFAULT_SOURCE for s in SHOWN)


@pytest.mark.parametrize("shown", SHOWN, ids=lambda s: f"{s.where} {s.query}")
def test_every_shown_query_parses(shown):
    read_command(shown.query)  # CommandSyntaxError (pointing at the word) fails the test


# ------------------------------------------------------------------------------ found in the default stream

def _matches(phrase: NounPhrase, objects) -> list:
    if phrase.taught or not isinstance(phrase, NounPhrase):
        raise AssertionError(f"no ground-truth rule for {phrase!r}: extend _truth or list the query in "
                             "NOT_ON_THE_DEFAULT_STREAM with the reason")
    return [o for o in objects if o.kind == phrase.kind and (phrase.colour is None or o.color == phrase.colour)]


def _center(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _truth(command, objects):
    """What the stream's ground truth says ``command`` designates: ("point", objects a target may be on) or
    ("count", (least, most))."""
    root, big = command.root, [o for o in objects if o.area >= MIN_AREA]
    if isinstance(root, NounPhrase):
        return "point", _matches(root, big)
    if isinstance(root, Quantity) and root.mode == "count":
        return "count", (len(_matches(root.of, big)), len(_matches(root.of, objects)))
    if isinstance(root, Relation) and root.relation in DIRECTIONAL and isinstance(root.anchor, NounPhrase):
        test, takes = DIRECTIONAL[root.relation]
        anchors = _matches(root.anchor, big)
        if len(anchors) != 1:
            return "point", []
        a = anchors[0]
        return "point", [o for o in _matches(root.subject, big)
                         if o is not a and test(_center(o.bbox) if takes == "center" else o.bbox, a.bbox)]
    raise AssertionError(f"no ground-truth rule for {command.text!r} ({type(root).__name__}): extend _truth or "
                         "list it in NOT_ON_THE_DEFAULT_STREAM with the reason")


@pytest.fixture(scope="module")
def grounded():
    """The documented queries grounded together, as `vlmedge run` would, on every EVERY-th frame of the default
    stream: [(scene, result)]."""
    from vlmedge.embedded import embedded_bundle
    from vlmedge.runtime.grounding.grounder import Grounder
    from vlmedge.runtime.io.sources import open_source

    grounder = Grounder(embedded_bundle("int8"))
    source = open_source(DEFAULT_SOURCE, realtime=False)
    source.open()
    out = []
    try:
        for i in range(FRAMES):
            frame = source.read()
            if i % EVERY == 0:
                out.append((source.last_scene, grounder.ground(frame, ON_DEFAULT)))
    finally:
        source.close()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("query", ON_DEFAULT)
def test_shown_queries_are_found_in_the_default_stream(grounded, query):
    """A documented query against the default source is found, on the object the stream's ground truth names
    (a count: the number it shows), in nearly every frame."""
    command = read_command(query)
    right, misses = 0, []
    for scene, result in grounded:
        kind, truth = _truth(command, scene.objects)
        got = result.command(query)
        if kind == "count":
            ok = got.count is not None and truth[0] <= got.count <= truth[1] and truth[1] > 0
            what = f"count {got.count}, truth {truth}"
        else:
            assert truth, f"{query!r}: the default stream does not show it (objects: " \
                          f"{[(o.color, o.kind, o.area) for o in scene.objects]})"
            first = got.targets[0] if got.found and got.targets else None
            ok = first is not None and any(o.mask[min(int(first.peak[1]), o.mask.shape[0] - 1),
                                                  min(int(first.peak[0]), o.mask.shape[1] - 1)] for o in truth)
            what = f"found={got.found} {got.reason or ''} peak={first.peak if first else None}"
        right += ok
        if not ok:
            misses.append(what)
    where = [s.where for s in SHOWN if s.query == query]
    # Measured on 60 groundings (300 frames): the red cup and the blue ball 100%, the purple bottle 95%, the
    # relation 88%, the count 70% (a third bottle passing behind the featured ones is the hard part): bars with
    # some margin for another CPU's int8 arithmetic
    goal = 0.6 if command.kind == "count" else 0.8
    assert right >= goal * len(grounded), f"{query!r} (shown at {where}): right in {right}/{len(grounded)} " \
                                          f"frames; misses: {misses[:5]}"


# -------------------------------------------------------------------------- the examples/README walkthrough

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Lines:
    """A child process's stdout, read by a thread, searchable while it runs."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 90.0, after: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, line in enumerate(self.lines[after:], after):
                if re.search(pattern, line):
                    return i
            if self.proc.poll() is not None and not any(re.search(pattern, x) for x in self.lines[after:]):
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in {timeout:g} s; got: {self.lines[-8:]}")


def _walkthrough() -> list[tuple[list[str], str]]:
    """The commands of examples/README.md's "Try them without a camera" block with their comments."""
    name, lines = next(b for b in _shell_blocks() if b[0] == "examples/README.md"
                       and any("robot_control_loop.py" in x for _, x in b[1]))
    return [(_argv(line), line.partition("#")[2].strip()) for _, line in lines if _argv(line)]


@pytest.mark.slow
def test_examples_walkthrough_the_robot_follows_the_ball(tmp_path):
    steps = _walkthrough()
    commands = [" ".join(argv[:2]) for argv, _ in steps]
    assert commands[:3] == ["vlmedge run", "python3 examples/robot_control_loop.py", "vlmedge send"], commands
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    (run_argv, _), (loop_argv, loop_says), (send_argv, send_says) = steps[:3]
    vlmedge = [sys.executable, "-m", "vlmedge.cli"]
    server = subprocess.Popen(vlmedge + run_argv[1:] + ["--publish", pub, "--control", ctl], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    loop = subprocess.Popen([sys.executable] + loop_argv[1:] + ["--address", pub, "--max-age", "5"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = _Lines(loop)
    try:
        # before the send: what the loop follows is the default query of the running vlmedge
        first = out.wait_for(re.escape(repr(DEFAULT_QUERY)) + " at x-error")
        assert "follows" in send_says and "ball" in send_says, send_says  # the claim checked below
        sent = subprocess.run(vlmedge + send_argv[1:2] + [ctl] + send_argv[2:], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0 and '"ok": true' in sent.stdout, sent.stdout + sent.stderr
        # "the robot now follows the ball": the loop steers toward the blue ball
        out.wait_for(r"'the blue ball' at x-error", timeout=30, after=first)
    finally:
        for p in (loop, server):
            p.terminate()
        for p in (loop, server):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
