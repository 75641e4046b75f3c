#!/usr/bin/env python3
"""Prometheus for a cluster that runs without Docker (`moeserve serve`).

Writes the shipped deploy/prometheus/prometheus.yml with its targets replaced
by real addresses — the same jobs, labels, scrape settings and rule files —
and copies the rule files beside it:

  deploy/prometheus/local_config.py --out /tmp/moeserve-prom \\
      --router 127.0.0.1:8000 --worker 127.0.0.1:9100 --worker 127.0.0.1:9101
  prometheus --config.file=/tmp/moeserve-prom/prometheus.yml --storage.tsdb.path=/tmp/moeserve-prom/data

Worker i (--worker, in the router's --worker order) takes the place of the
shipped target labelled dp_rank i; a cluster with more workers than the
shipped file lists gets more targets of the same shape.
"""
import argparse
import copy
import os
import shutil
import sys

import yaml


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for prometheus.yml and the rule files")
    ap.add_argument("--router", required=True, help="HOST:PORT of the router's HTTP API (it serves /metrics)")
    ap.add_argument("--worker", action="append", default=[], help="HOST:PORT of a worker's --metrics-port")
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "prometheus.yml")) as f:
        config = yaml.safe_load(f)
    for job in config["scrape_configs"]:
        if job["job_name"] == "moeserve-router":
            job["static_configs"] = [{**job["static_configs"][0], "targets": [a.router]}]
        elif job["job_name"] == "moeserve-worker":
            shape = job["static_configs"][0]
            job["static_configs"] = [
                {**copy.deepcopy(shape), "targets": [w], "labels": {**shape.get("labels", {}), "dp_rank": str(i)}}
                for i, w in enumerate(a.worker)
            ]
        else:
            sys.exit(f"local_config.py: unknown job {job['job_name']} in prometheus.yml")
    os.makedirs(a.out, exist_ok=True)
    for rules in config.get("rule_files", []):
        shutil.copy(os.path.join(here, rules), os.path.join(a.out, rules))
    with open(os.path.join(a.out, "prometheus.yml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    print(os.path.join(a.out, "prometheus.yml"))


if __name__ == "__main__":
    main()
