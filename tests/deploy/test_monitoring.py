"""The compose monitoring profile: Prometheus scrapes the port `consume` serves its metrics on, and
every Grafana panel queries a metric name a real ConsumerMetrics exports (a renamed metric would
otherwise leave a panel silently empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from inference.telemetry import ConsumerMetrics

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"
METRIC = re.compile(r"\blineinspect_[a-z_]+\b")


def exported_sample_names() -> set[str]:
    """Every series name ConsumerMetrics can expose (counters as *_total, histograms as
    *_bucket/_sum/_count), from its own registry: nothing hand-written."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    for fam in ConsumerMetrics().registry.collect():
        names |= {fam.name + s for s in suffixes[fam.type]}
    return names


def dashboard() -> dict:
    return json.loads((COMPOSE / "grafana" / "dashboards" / "lineinspect.json").read_text())


def test_every_panel_queries_metrics_that_consume_exports() -> None:
    exported = exported_sample_names()
    used: set[str] = set()
    for panel in dashboard()["panels"]:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, panel["title"]
        for e in exprs:
            names = set(METRIC.findall(e))
            assert names, f"{panel['title']}: no lineinspect metric in {e!r}"
            assert names <= exported, f"{panel['title']}: {sorted(names - exported)} not exported"
            used |= names
    # the dashboard covers the consumer's main signals
    assert {"lineinspect_frames_total", "lineinspect_latency_seconds_bucket", "lineinspect_consumer_lag",
            "lineinspect_dlq_total", "lineinspect_models_held"} <= used


def test_panels_use_the_provisioned_datasource() -> None:
    ds = yaml.safe_load((COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])


def test_prometheus_scrapes_the_consumers_metrics_port_and_compose_mounts_it_all() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    svc = compose["services"]
    cmd = svc["consumer"]["command"]
    port = int(cmd[cmd.index("--metrics-port") + 1])
    prom = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["dns_sd_configs"][0]["port"] == port and job["dns_sd_configs"][0]["names"] == ["consumer"]
    assert svc["consumer"]["environment"]["LINEINSPECT_METRICS_HOST"] == "0.0.0.0"
    mounts = svc["prometheus"]["volumes"] + svc["grafana"]["volumes"]
    for m in mounts:
        src = m.split(":")[0]
        if src.startswith("./"):
            assert (COMPOSE / src).exists(), m
    provider = yaml.safe_load((COMPOSE / "grafana" / "provisioning" / "dashboards" / "lineinspect.yml").read_text())
    assert any(m.endswith(f":{provider['providers'][0]['options']['path']}:ro") for m in svc["grafana"]["volumes"])
