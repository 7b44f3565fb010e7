"""The Prometheus exporter: ``/metrics`` in Prometheus's text format, on the address ``[metrics]
address`` names (``--metrics`` of ``runink server``, ``agent`` and ``barn serve``;
``--metrics-port`` of ``runink run``). Off when none is given: nothing is served, and the
hook keeps no state (``runink.core.metrics.report`` does not even call it).

Samples of the ``runink_export_metrics`` hook update prometheus-client metrics (a counter's
value is an increment, a gauge's the new value, a histogram's an observation); the state gauges
(``runink.core.metrics.collect``) are read at each scrape. The catalog's metrics are declared up
front with their help and labels; a plugin's own are declared when first seen. A metric gets at
most ``MAX_SERIES`` label sets: past that its new series are dropped and counted
(``runink_exporter_dropped_total{exporter="prometheus"}``), so a label that is not bounded
cannot eat the process's memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from runink.core import metrics
from runink.core.hookspecs import hookimpl
from runink.core.metrics import METRICS, MetricSpec, collect
from runink.core.units import split_address

if TYPE_CHECKING:
    from collections.abc import Sequence

    from runink.core.config import RuninkConfig
    from runink.core.model import MetricSample

log = logging.getLogger(__name__)

MAX_SERIES = 10_000  # label sets of one metric
#: the catalog's gauges set by events (the others are state, read when scraped)
EVENT_GAUGES = frozenset({"runink_scheduler_pending_tasks"})
#: the catalog's counters read when scraped (absolute totals a component keeps)
STATE_COUNTERS = frozenset({"runink_exporter_dropped_total"})


def _is_state(spec: MetricSpec) -> bool:
    return spec.name in STATE_COUNTERS or (spec.kind == "gauge" and spec.name not in EVENT_GAUGES)


class _State:
    """The state gauges, read when scraped (a prometheus-client collector)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        for found in collect():
            spec = METRICS.get(found.name)
            names = list(spec.labels) if spec is not None else sorted(found.labels)
            family = families.get(found.name)
            if family is None:
                described = spec.help if spec is not None else "(a plugin's metric)"
                kind = CounterMetricFamily if found.kind == "counter" else GaugeMetricFamily
                family = families[found.name] = kind(found.name, described, labels=names)
            family.add_metric([str(found.labels.get(name, "")) for name in names], found.value)
        yield from families.values()

    def describe(self) -> list[Any]:
        return []  # (known only when read)


class PrometheusExporter:
    """The hook plugin: one registry per process, made and served over HTTP once configured
    (prometheus-client is not even imported by a process that does not serve metrics)."""

    def __init__(self) -> None:
        self.registry: Any = None
        self.address: tuple[str, int] | None = None  # where it serves, once it does
        self.dropped = 0
        self._metrics: dict[str, Any] = {}
        self._series: dict[str, set[tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._unregister: Any = None

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        address = config.metrics.address
        if address is None or self._server is not None:
            return
        host, port = split_address(address) or ("", 0)  # (the config's pattern checked it)
        self.serve(host or "127.0.0.1", port)

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` (port 0: any free one) from a thread of its own."""
        import prometheus_client
        from prometheus_client import CollectorRegistry

        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # (no *_created series)
        self.registry = CollectorRegistry(auto_describe=True)
        for spec in METRICS.values():
            if not _is_state(spec):
                self._declare(spec)
        self.registry.register(_State())
        own = metrics.sample("runink_exporter_dropped_total", 0, exporter="prometheus")
        self._unregister = metrics.register_gauges(lambda: [replace(own, value=float(self.dropped))])
        server = _serve(self.registry, host, port)
        self._server = server
        self.address = (host, int(server.server_port))
        log.info("metrics: serving http://%s:%d/metrics", host, self.address[1])
        return self.address

    @hookimpl
    def runink_unconfigure(self) -> None:
        if self._server is not None:
            self._unregister()
            server, self._server = self._server, None

            def stop() -> None:
                server.shutdown()
                server.server_close()

            # (in a thread: the command ending never waits on the server's poll)
            threading.Thread(target=stop, daemon=True, name="metrics-stop").start()

    @hookimpl
    def runink_export_metrics(self, samples: Sequence[MetricSample]) -> None:
        if self._server is None:
            return  # not exporting in this process
        for found in samples:
            self._apply(found)

    def _apply(self, found: MetricSample) -> None:
        spec = METRICS.get(found.name) or MetricSpec(
            found.name, found.kind, "(a plugin's metric)", tuple(sorted(found.labels))
        )
        if found.name in METRICS and _is_state(spec):
            return  # (read when scraped: not an event)
        metric = self._metrics.get(found.name) or self._declare(spec)
        values = tuple(str(found.labels.get(name, "")) for name in spec.labels)
        if values and not self._room(found.name, values):
            return
        target = metric.labels(*values) if values else metric
        if spec.kind == "counter":
            if found.value > 0:
                target.inc(found.value)
        elif spec.kind == "gauge":
            target.set(found.value)
        else:
            target.observe(found.value)

    def _room(self, name: str, values: tuple[str, ...]) -> bool:
        with self._lock:
            seen = self._series.setdefault(name, set())
            if values in seen:
                return True
            if len(seen) < MAX_SERIES:
                seen.add(values)
                return True
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("metrics: %s has %d label sets: new ones dropped (%d so far)", name, MAX_SERIES, self.dropped)
        return False

    def _declare(self, spec: MetricSpec) -> Any:
        from prometheus_client import Counter, Gauge, Histogram

        with self._lock:
            if spec.name in self._metrics:
                return self._metrics[spec.name]
            common = {"labelnames": spec.labels, "registry": self.registry}
            if spec.kind == "counter":
                metric: Any = Counter(spec.name, spec.help, **common)
            elif spec.kind == "gauge":
                metric = Gauge(spec.name, spec.help, **common)
            else:
                metric = Histogram(spec.name, spec.help, buckets=spec.buckets or Histogram.DEFAULT_BUCKETS, **common)
            self._metrics[spec.name] = metric
            return metric


def _serve(registry: Any, host: str, port: int) -> Any:
    """prometheus-client's WSGI app on ``host:port``, served by a daemon thread that notices a
    shutdown within 50 ms (its own start_http_server polls every 0.5 s: each process that
    served metrics took up to half a second more to exit)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

    from runink.core.small_http import Bounded

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # (a scrape a line would drown the process's log)

    class Server(Bounded, ThreadingWSGIServer):
        pass

    server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="metrics").start()
    return server
