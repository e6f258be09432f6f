"""The soak of #14's acceptance, 2 minutes (the 30-minute benchmark is ``benchmarks/soak.py``): ``vlmedge run``
in a child process against a local MJPEG camera with two outages, a subscriber reading every message and a
control client changing the commands every second."""

import json
import sys

import pytest
from _scripts import load_script


def _soak_module():
    return load_script("benchmarks/soak.py", "vlmedge_soak_benchmark")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the soak reads /proc")
def test_soak_two_minutes(embedded_int8, tmp_path):
    soak = _soak_module()
    res = soak.soak(2.0, outage_every_s=40.0, outage_s=5.0, warmup_s=30.0, recover_within_s=30.0,
                    bundle=str(embedded_int8), log_path=tmp_path / "run.log")
    report = json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1)
    assert len(res["outages"]) == 2, report
    assert res["checks"] == {"rss_growth": True, "outages_recovered": True, "no_sequence_gaps": True,
                             "clean_exit": True}, report + (tmp_path / "run.log").read_text()[-3000:]
    assert res["messages"]["targets"] > 100 and res["control"]["requests"] > 60, report
