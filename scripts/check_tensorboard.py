#!/usr/bin/env python3
"""Reads a runner TensorBoard logdir with the real TensorBoard (pip install tensorboard).

    scripts/check_tensorboard.py "$(runner tensorboard pipelines/demo.toml)"

1. Every run (directory with an event file) through TensorBoard's own EventAccumulator:
   its scalar tags, steps and wall times, which must increase with the step.
2. A TensorBoard server on the logdir, asked through the HParams plugin's HTTP API for
   the experiment (hparams and metrics it inferred from the sessions) and the session
   groups: the table its HParams dashboard draws.

Exits 1 if a curve's wall times do not increase or the HParams dashboard sees no
sessions. A check for developers, not part of `cargo test` (it needs Python).
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from tensorboard.backend.event_processing import event_accumulator


def runs(logdir):
    for root, _dirs, files in os.walk(logdir, followlinks=True):
        if any("tfevents" in f for f in files):
            yield root


def check_curves(logdir):
    ok = True
    for run in sorted(runs(logdir)):
        acc = event_accumulator.EventAccumulator(run, size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        curve = [t for t in tags if not t.startswith("final/")]
        name = os.path.relpath(run, logdir)
        if not curve:
            print(f"{name}: no scalars")
            continue
        events = acc.Scalars(curve[0])
        steps = [e.step for e in events]
        walls = [e.wall_time for e in events]
        rising = all(b > a for a, b in zip(walls, walls[1:]))
        ok &= rising and steps == sorted(set(steps))
        span = walls[-1] - walls[0] if walls else 0
        print(
            f"{name}: {len(tags)} tags, {curve[0]} steps {steps[0]}..{steps[-1]} "
            f"({len(steps)} events), wall times {'increasing' if rising else 'NOT increasing'}"
            f" over {span:.1f}s; final: {sorted(t for t in tags if t.startswith('final/'))}"
        )
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/data/plugin/hparams/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def check_hparams(logdir):
    port = free_port()
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port),
         "--bind_all", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        experiment = None
        for _ in range(60):
            time.sleep(1)
            try:
                experiment = post(port, "experiment", {"experimentName": ""})
                if experiment.get("hparamInfos"):
                    break
            except OSError:
                continue
        if not experiment or not experiment.get("hparamInfos"):
            print("HParams: no experiment")
            return False
        hparams = [h["name"] for h in experiment["hparamInfos"]]
        metrics = [m["name"]["tag"] for m in experiment.get("metricInfos", [])]
        groups = post(port, "session_groups", {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 1000,
        })
        sessions = [s for g in groups.get("sessionGroups", []) for s in g["sessions"]]
        print(f"HParams: {len(hparams)} hparams, {len(metrics)} metrics, "
              f"{len(groups.get('sessionGroups', []))} session groups, {len(sessions)} sessions")
        for s in sessions:
            values = {m["name"]["tag"]: round(m["value"], 4) for m in s.get("metricValues", [])
                      if m["name"]["tag"].startswith("final/")}
            print(f"  {s['name']}: {s.get('status', 'STATUS_UNKNOWN')} {values}")
        return bool(sessions)
    finally:
        tb.terminate()
        tb.wait()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    logdir = sys.argv[1]
    ok = check_curves(logdir)
    ok &= check_hparams(logdir)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
