"""The session-file reader printed in docs/wire-protocol.md reads what rig/session.py reads (issue 22 point 5).

The doc's stand-alone reader (standard library only, its own LZ4 block decoder) is extracted from the
page and run on a real recorded session: the same records, headers and payloads as
``rig.session.Session``, compressed ones included; a torn tail stops both readers at the same
record; and run as a script it lists the session's trials.
"""

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rig import wire
from rig.session import LOG_NAME, Session
from tests.rigd_process import REPO, rigd

DOC = REPO / "docs" / "wire-protocol.md"
Reader = Callable[[Path], Iterator[tuple[int, bool, dict[str, Any], bytes]]]


def doc_reader_source() -> str:
    text = DOC.read_text()
    at = text.index("### A stand-alone reader")
    m = re.search(r"```python\n(.*?)\n```", text[at:], re.S)
    assert m, "docs/wire-protocol.md: no python block under 'A stand-alone reader'"
    return m.group(1)


def doc_reader() -> Reader:
    ns: dict[str, Any] = {"__name__": "wire_doc_reader"}
    exec(compile(doc_reader_source(), str(DOC), "exec"), ns)  # the doc's code, as printed
    reader: Reader = ns["read_rlog"]
    return reader


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wiredoc")
    with rigd(tmp, "--rig", "sim", "--clock", "rig", "--trials", "3", "--seed", "5", "--no-ui") as r:
        r.wait_ready()
        rc = r.wait(timeout=600)
        out = r.output()
    assert rc == 0, out
    return r.session_dir()


def test_the_docs_reader_reads_the_same_records_as_rig_session(session: Path) -> None:
    read_rlog = doc_reader()
    s = Session.open(session)
    ours = list(read_rlog(session / LOG_NAME))
    theirs = list(s.records())
    assert len(ours) == len(theirs) > 1000 and s.torn_bytes == 0
    for (t_local, _, h, payload), rec in zip(ours, theirs, strict=True):
        assert t_local == rec.t_local_ns
        assert (h["magic"], h["version"]) == (wire.MAGIC, wire.VERSION)
        assert (h["kind"], h["rig_id"], h["stream_id"], h["seq"], h["t_rig_ns"], h["payload_nbytes"]) == (
            int(rec.header.kind), rec.header.rig_id, rec.header.stream_id, rec.header.seq, rec.header.t_rig_ns,
            rec.header.payload_nbytes)
        assert payload == bytes(rec.payload)
    compressed = [h for _, z, h, _ in ours if z]
    assert compressed, "the session has no lz4-compressed record: the doc's decoder went untested"
    assert {h["kind"] for h in compressed} >= {int(wire.Kind.DECODER_OUTPUT)}


def test_a_torn_tail_stops_both_readers_at_the_same_record(session: Path, tmp_path: Path) -> None:
    torn = tmp_path / "torn"
    torn.mkdir()
    shutil.copy(session / "manifest.json", torn / "manifest.json")
    data = (session / LOG_NAME).read_bytes()
    (torn / LOG_NAME).write_bytes(data[:-7])  # a crash in the middle of the last record
    ours = list(doc_reader()(torn / LOG_NAME))
    s = Session.open(torn)
    assert len(ours) == len(s) == len(list(Session.open(session).records())) - 1
    assert s.torn_bytes > 0


def test_the_docs_reader_runs_as_a_script(session: Path, tmp_path: Path) -> None:
    script = tmp_path / "read_rlog.py"
    script.write_text(doc_reader_source())
    res = subprocess.run([sys.executable, "-I", str(script), str(session / LOG_NAME)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    trials = [ln for ln in res.stdout.splitlines() if ln.startswith("trial ")]
    assert [ln.split()[1] for ln in trials] == ["0", "1", "2"]
    assert "records per kind:" in res.stdout
