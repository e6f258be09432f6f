"""benchmarks/gpu_check.sh without a GPU: its CPU side (checkpoint, the six exports through the CLI, the ORT CPU
comparison and the table) runs in --dry-run, so that the script is ready when a GPU is at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_exports_and_compares_on_the_cpu(tmp_path):
    result = tmp_path / "rows.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_TIMEOUT": "900"}
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--tiny", "--jobs", "1",
                           "--platforms", "jetson-orin-jp6",
                           "--calib-count", "2", "--frames", "2", "--work", str(tmp_path / "work"),
                           "--json", str(result)], capture_output=True, text=True, env=env, timeout=1000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 3  # header + (fp32, fp16, int8); the script's default also does `cuda`
    rows = json.loads(result.read_text())["rows"]
    for row in rows:
        bundle = tmp_path / "work" / f"{row['platform']}-{row['precision']}"
        assert (bundle / "manifest.json").is_file()
        if row["precision"] != "fp32":
            assert row["engine"] == "not run (--dry-run)"
            assert row["ort_cpu"]["image_cosine_min"] >= 0.99 and row["ort_cpu"]["patch_argmax_agreement"] >= 0.9
            assert json.loads((bundle / "manifest.json").read_text())["extra"]["fp32_islands"]["image"]["nodes"]
    assert "no GPU" in proc.stdout
