"""Pipeline throughput of `vlmedge run` with one browser watching the browser view (`--web`) vs without.

    python benchmarks/bench_web.py [--rounds 5] [--seconds 15] [--realtime] [--json OUT]

Goal (issue #16): throughput with one browser attached >= 95% of without. The source is the synthetic scene,
the model the embedded int8 bundle (`vlmedge run`'s defaults), headless, no sockets. By default the scene is
read without real-time pacing (`--no-realtime`): the loop grounds frames as fast as it can, the worst case for
anything sharing the cores with it; `--realtime` paces it at the scene's 30 fps, as a camera would.

Three variants, measured in PAIRED rounds (each round runs every variant once, the order rotated from round to
round, so a load change on a shared machine hits all of them alike):
  off       no --web
  idle      --web, nobody watching (the cost of handing each frame over)
  browser   --web with one headless Chromium showing the page (chromedriver, selenium), on the SAME machine: the
            browser's own decoding and drawing take cores from the loop too; a browser on another computer, the
            usual case, leaves only the server's work (overlay + JPEG, once per frame the browser asks for) here
Each variant: one grounder for all runs; after 30 warm-up frames (and the first frames shown in the page) the
grounded frames are counted for --seconds. Reported per round: frames/s of each variant and browser/off, idle/off;
overall the medians; and the frames/s the page showed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import threading
import time
from datetime import date
from pathlib import Path

VARIANTS = ("off", "idle", "browser")


def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)


def _wait(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _process_tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {root}, True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        grew = bool(new)
        tree |= new
    return sum(cpu.get(p, 0.0) for p in tree)


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def render_cpu_ms(grounder, reps: int = 60) -> dict:
    """CPU time (this thread's, so other processes' load barely moves it) of what the view does per frame it
    sends: the overlay and the JPEG of a grounded 640x480 scene, and the state JSON."""
    import cv2

    from vlmedge.runtime.display import draw_overlay
    from vlmedge.runtime.io.frames import Frame
    from vlmedge.runtime.messaging.publisher import targets_message
    from vlmedge.scenes.render import render_scene

    image = render_scene(3).frame
    result = grounder.ground(image, ["the red cup", "the blue ball"])
    frame = Frame(0, image, time.monotonic_ns(), time.time_ns())
    steps = {"overlay": lambda: draw_overlay(image, result, heatmap=False, fps=30.0, latency_ms=20.0),
             "heatmap (not drawn by the view)": lambda: draw_overlay(image, result, fps=30.0, latency_ms=20.0),
             "jpeg": lambda: cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80]),
             "state_json": lambda: targets_message(result, frame, seq=0, model="m")}
    out = {}
    for name, step in steps.items():
        samples = []
        for _ in range(reps):
            t = time.thread_time()
            step()
            samples.append(1000 * (time.thread_time() - t))
        out[name] = statistics.median(samples)
    out["total"] = out["overlay"] + out["jpeg"] + out["state_json"]
    return out


def measure(variant: str, grounder, seconds: float, realtime: bool, driver) -> dict:
    from vlmedge.runtime.app import RunConfig, run

    cfg = RunConfig(source="synthetic://tabletop", display=False, publish=None, control=None, realtime=realtime,
                    web=None if variant == "off" else "127.0.0.1:0", print_interval_s=None)
    stop, ready, times, out = threading.Event(), {}, [], {}

    def target():
        out["summary"] = run(cfg, grounder=grounder, stop_event=stop, on_ready=ready.update,
                             on_result=lambda _r, _f: times.append(time.monotonic()))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        _wait(lambda: ready, 120, "the run to start")
        _wait(lambda: len(times) >= 30, 120, "30 warm-up frames")
        page0 = 0
        if variant == "browser":
            driver.get(ready["web"])
            _wait(lambda: driver.execute_script("return window.vlmedge.frames") >= 3, 60, "frames in the page")
            page0 = driver.execute_script("return window.vlmedge.frames")
        browser_pid = driver.service.process.pid
        n0, t0, c0, b0 = len(times), time.monotonic(), _own_cpu_s(), _process_tree_cpu_s(browser_pid)
        time.sleep(seconds)
        n1, t1, c1, b1 = len(times), time.monotonic(), _own_cpu_s(), _process_tree_cpu_s(browser_pid)
        page1 = driver.execute_script("return window.vlmedge.frames") if variant == "browser" else 0
    finally:
        stop.set()
        thread.join(60)
        if variant == "browser":
            driver.get("about:blank")
    return {"fps": (n1 - n0) / (t1 - t0), "frames": n1 - n0, "seconds": t1 - t0,
            # CPU time of this process (the loop, its threads, the view's threads) per grounded frame, and the
            # browser's (chromedriver + Chromium) per second: far less sensitive to other load than frames/s
            "cpu_ms_per_frame": 1000 * (c1 - c0) / max(n1 - n0, 1), "browser_cpu_share": (b1 - b0) / (t1 - t0),
            "page_fps": (page1 - page0) / (t1 - t0) if variant == "browser" else None,
            "web": out["summary"].extra.get("web")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=15.0, help="counting time of each run (default 15)")
    ap.add_argument("--realtime", action="store_true", help="pace the scene at 30 fps (default: as fast as it goes)")
    ap.add_argument("--no-spinning", action="store_true",
                    help="ONNX Runtime workers sleep instead of spin-waiting: CPU time per frame then counts work, "
                         "not waiting (spinning burns more of it the busier the machine is)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    from vlmedge.embedded import embedded_bundle
    from vlmedge.runtime.grounding.grounder import Grounder

    bundle = embedded_bundle("int8")
    grounder = Grounder(bundle, spinning=not args.no_spinning)
    render = render_cpu_ms(grounder)
    print(f"the view's CPU per frame sent: {render}", flush=True)
    driver = _chromium()
    rounds = []
    load_before = os.getloadavg()
    try:
        for r in range(args.rounds):
            order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
            got = {v: measure(v, grounder, args.seconds, args.realtime, driver) for v in order}
            row = {"order": list(order), **{v: got[v] for v in VARIANTS},
                   "browser_over_off": got["browser"]["fps"] / got["off"]["fps"],
                   "idle_over_off": got["idle"]["fps"] / got["off"]["fps"],
                   # the view's own CPU per frame over the loop's: what it costs when the browser is elsewhere
                   "cpu_per_frame_browser_over_off":
                       got["browser"]["cpu_ms_per_frame"] / got["off"]["cpu_ms_per_frame"]}
            rounds.append(row)
            print(f"round {r + 1}: off {got['off']['fps']:.1f}  idle {got['idle']['fps']:.1f}  browser "
                  f"{got['browser']['fps']:.1f} FPS (page {got['browser']['page_fps']:.1f})  browser/off "
                  f"{row['browser_over_off']:.3f}  idle/off {row['idle_over_off']:.3f}  cpu/frame "
                  f"{got['off']['cpu_ms_per_frame']:.1f} / {got['idle']['cpu_ms_per_frame']:.1f} / "
                  f"{got['browser']['cpu_ms_per_frame']:.1f} ms  chromium {got['browser']['browser_cpu_share']:.2f} "
                  f"cores  load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        driver.quit()
    med = {v: statistics.median(r[v]["fps"] for r in rounds) for v in VARIANTS}
    summary = {"median_fps": med,
               "median_browser_over_off": statistics.median(r["browser_over_off"] for r in rounds),
               "median_idle_over_off": statistics.median(r["idle_over_off"] for r in rounds),
               "median_page_fps": statistics.median(r["browser"]["page_fps"] for r in rounds),
               "median_cpu_ms_per_frame": {v: statistics.median(r[v]["cpu_ms_per_frame"] for r in rounds)
                                           for v in VARIANTS},
               "median_cpu_per_frame_browser_over_off": statistics.median(r["cpu_per_frame_browser_over_off"]
                                                                          for r in rounds),
               "median_browser_cpu_share": statistics.median(r["browser"]["browser_cpu_share"] for r in rounds),
               "render_cpu_ms_per_frame_sent": render,
               "goal": "browser/off >= 0.95"}
    print(json.dumps(summary, indent=1))
    if args.json:
        spec = grounder.manifest
        result = {"date": date.today().isoformat(), "machine": {"cpu": platform.processor() or platform.machine(),
                                                               "cores": os.cpu_count(), "load_before": load_before,
                                                               "load_after": os.getloadavg()},
                  "model": {"bundle": str(bundle), "model_id": spec.model_id},
                  "source": "synthetic://tabletop 640x480", "realtime": args.realtime, "seconds": args.seconds,
                  "ort_spinning": not args.no_spinning,
                  "rounds": rounds, "summary": summary}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
