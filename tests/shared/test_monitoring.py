"""The monitoring files beside the compose file: the Prometheus alert rules and the Grafana dashboard name
only metrics the services really export (read from their /metrics with prometheus_client's parser)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app as gateway_app
from gateway.settings import Settings as GatewaySettings
from handler.app import create_app as handler_app
from handler.settings import Settings as HandlerSettings
from registry.app import create_app as registry_app
from registry.settings import Settings as RegistrySettings
from scheduler.app import create_app as scheduler_app
from scheduler.settings import Settings as SchedulerSettings

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bconveyor_[a-z_]+\b")
NOWHERE = "http://127.0.0.1:9"  # nothing listens there
TOKEN = "metrics-" + "t" * 32


async def exported(aiohttp_client: Any, tmp_path: Path) -> set[str]:
    """Every series name the services' /metrics pages can show (a counter's ``_total``, a histogram's
    ``_bucket``, ``_count`` and ``_sum``)."""
    apps = [registry_app(RegistrySettings(store_url="memory://", log_url=NOWHERE)),
            scheduler_app(SchedulerSettings(store_url="memory://")),
            handler_app(HandlerSettings(scheduler_url=NOWHERE, registry_url=NOWHERE, artifacts_dir=str(tmp_path),
                                        queues=["export"])),
            gateway_app(GatewaySettings(receptionists=[NOWHERE], registry_url=NOWHERE, rate_limit_per_s=0,
                                        metrics_token=TOKEN))]
    names: set[str] = set()
    for app in apps:
        client = await aiohttp_client(app)
        text = await (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text()
        for family in text_string_to_metric_families(text):
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
            names |= {family.name + suffix for suffix in suffixes}
    return names


async def test_alert_rules_are_complete_and_name_real_metrics(aiohttp_client: Any, tmp_path: Path) -> None:
    known = await exported(aiohttp_client, tmp_path)
    rules = yaml.safe_load((ROOT / "conveyor-alerts.yml").read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} >= {"ConveyorQueueBacklogOld", "ConveyorDeadLettersGrowing",
                                                 "ConveyorNoHandlerAlive", "ConveyorGatewayErrorRate"}
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket") and rule["annotations"]["summary"], rule
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= known, (rule["alert"], used - known)


async def test_the_grafana_dashboard_names_real_metrics(aiohttp_client: Any, tmp_path: Path) -> None:
    known = await exported(aiohttp_client, tmp_path)
    dashboard = json.loads((ROOT / "conveyor-grafana.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used <= known, used - known
    assert {"conveyor_queue_ready", "conveyor_jobs_finished_total", "conveyor_job_wait_seconds_bucket",
            "conveyor_handler_slots"} <= used
