"""benchmarks/contention.py's child: quiet and busy rounds on a real bundle, with the CPU accounting that says
why a backend slows down beside a busy process (its cores, the busy process's cores, CPU time per encode)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from _scripts import load_script


@pytest.fixture(scope="module")
def cont():
    return load_script("benchmarks/contention.py")


def test_ticks_count_a_busy_process_cpu_time_and_none_for_a_gone_one(cont):
    busy = subprocess.Popen([sys.executable, "-c", cont.BUSY])
    try:
        time.sleep(0.2)
        first = cont._ticks(busy.pid)
        time.sleep(0.5)
        second = cont._ticks(busy.pid)
    finally:
        busy.kill()
        busy.wait()
    assert first is not None and second > first  # it kept using the CPU
    assert cont._ticks(busy.pid) is None  # reaped: no /proc entry


def test_child_reports_times_cores_and_cpu_per_encode_for_both_conditions(cont, tiny_bundle_dir):
    # ~0.4 ms per encode of the tiny bundle: 1000 make a window long enough for the busy process's share
    out = cont.child({"bundle": str(tiny_bundle_dir), "setting": "ort-1t", "rounds": 2, "per_round": 1000})
    assert len(out["rounds"]) == 2 and len(out["loadavg"]) == 3
    for r in out["rounds"]:
        for cond in ("quiet", "busy"):
            assert r[cond] > 0 and r[f"{cond}_cpu_ms"] > 0
            assert 0 < r[f"{cond}_cores"] <= os.cpu_count() + 0.5  # one ORT thread: about one core at most
        assert r["busy_process_cores"] > 0.2  # the busy loop ran while the encodes were timed
    e = cont.summarize({"rounds": out["rounds"], "loadavg": [out["loadavg"][0]]})
    assert e["slowdown_median"] > 0 and e["busy_cores_median"] > 0 and e["busy_process_cores_median"] > 0.2
    assert e["quiet_cpu_ms_median"] == pytest.approx(sorted(r["quiet_cpu_ms"] for r in out["rounds"])[0] / 2
                                                     + sorted(r["quiet_cpu_ms"] for r in out["rounds"])[1] / 2,
                                                     abs=1e-3)


def test_no_busy_share_from_a_window_too_short_for_clock_ticks(cont, tiny_bundle_dir):
    out = cont.child({"bundle": str(tiny_bundle_dir), "setting": "ort-1t", "rounds": 1, "per_round": 2})
    assert "busy_process_cores" not in out["rounds"][0] and out["rounds"][0]["busy_cores"] > 0


def test_summarize_leaves_out_what_older_rounds_lack(cont):
    e = cont.summarize({"rounds": [{"quiet": 10.0, "busy": 15.0}, {"quiet": 10.0, "busy": 25.0}], "loadavg": [1.234]})
    assert (e["quiet_median_ms"], e["busy_median_ms"], e["slowdown_median"]) == (10.0, 20.0, 2.0)
    assert "busy_cores_median" not in e and e["load_avg_1min"] == [1.23] and "loadavg" not in e


def test_print_table_shows_the_cpu_accounting_when_measured(cont, capsys):
    entry = {"quiet_median_ms": 10.0, "busy_median_ms": 16.0, "slowdown_median": 1.6, "load_avg_1min": [0.5],
             "quiet_cores_median": 1.9, "busy_cores_median": 1.3, "quiet_cpu_ms_median": 19.0,
             "busy_cpu_ms_median": 21.0, "busy_process_cores_median": 0.7}
    cont.print_table({"b": {"ov-2t": entry, "old": {k: entry[k] for k in list(entry)[:4]}}})
    out = capsys.readouterr().out
    assert "1.90/1.30" in out and "0.70" in out and "19/21" in out
    assert out.splitlines()[-1].split()[1] == "old" and " - " in out.splitlines()[-1]
