"""Runink's lineage events as OpenLineage run events, built as JSON-able dicts.

One scenario run is one OpenLineage run: START when its first attempt starts, COMPLETE or FAIL
when its last one ended. Its ``runId`` is a UUID derived from the scenario run's id (the same
for START and its end), and a ``parent`` facet names the pipeline run it belongs to. The
source is the input dataset (its schema, and rows read as a data-quality metric); each sink is
an output dataset (the valid rows' schema and count, the invalid sink's count of dead
letters). What OpenLineage has no facet for (attempts, node, job, drift, contract) travels in
a ``runink`` run facet.

Dataset names follow OpenLineage's naming for file systems and object stores: a local file is
namespace ``file`` and its absolute path, an S3 object ``s3://BUCKET`` and its key.

Built as plain dicts, in the shape openlineage-python's classes serialize to (None fields
left out): importing that client costs ~0.3-0.45 s of CPU, which every `runink run` paid on
its JSON Lines sink's thread, beside the run. The ``openlineage`` sink, which sends through
the client, wraps the same dicts in the client's event classes (``openlineage_sink``). The
tests check each event against OpenLineage's JSON schemas, and the facet schema URLs below
against the installed client's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import runink
from runink.core.model import LineageEvent

#: what every event and facet names as its producer (OpenLineage wants a URI)
PRODUCER = f"https://github.com/runink/runink/tree/v{runink.__version__}"
#: where the ``runink`` run facet's JSON schema is described (docs/lineage.md)
RUNINK_FACET_SCHEMA = "https://github.com/runink/runink/blob/main/docs/lineage.md#the-runink-run-facet"
#: the UUID namespace run ids are derived in (uuid5): stable, so START and its end agree
RUN_NAMESPACE = uuid.UUID("4f0b6f7c-6a43-5d1e-9a55-52756e696e6b")
#: the RunEvent schema of the OpenLineage spec the events follow
EVENT_SCHEMA = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
_FACETS = "https://openlineage.io/spec/facets"
#: each facet's schema, as openlineage-python's facet classes name them (tests compare)
FACET_SCHEMAS = {
    "processing_engine": f"{_FACETS}/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
    "parent": f"{_FACETS}/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet",
    "errorMessage": f"{_FACETS}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
    "schema": f"{_FACETS}/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
    "dataQualityMetrics": (
        f"{_FACETS}/1-0-3/DataQualityMetricsInputDatasetFacet.json#/$defs/DataQualityMetricsInputDatasetFacet"
    ),
    "outputStatistics": (
        f"{_FACETS}/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet"
    ),
    "runink": RUNINK_FACET_SCHEMA,
}


def run_uuid(run_id: str) -> str:
    """The OpenLineage ``runId`` of a Runink run id (a scenario run or a pipeline run)."""
    return str(uuid.uuid5(RUN_NAMESPACE, run_id))


def job_namespace(herd: str) -> str:
    return f"runink.{herd}"


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage's (namespace, name) of a dataset's canonical URI (``parquet:///abs/x.parquet``,
    ``s3://bucket/key``): a local file is ``file`` and its path, an object ``s3://BUCKET`` and its key."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "file", uri
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        return f"s3://{bucket}", key
    return "file", rest


def to_dict(event: LineageEvent) -> dict[str, Any]:
    """``event`` as an OpenLineage run event (a JSON-able dict)."""
    facets: Mapping[str, Any] = event.facets
    schemas = facets.get("schemas") or {}
    counted = event.event_type != "START"
    run_facets = {
        "processing_engine": _facet("processing_engine", name="runink", version=runink.__version__),
        "runink": _runink_facet(event, counted),
    }
    if facets.get("pipeline_run"):
        run_facets["parent"] = _facet(
            "parent",
            run={"facets": {}, "runId": run_uuid(str(facets["pipeline_run"]))},
            job={
                "facets": {},
                "name": str(facets.get("pipeline") or "pipeline"),
                "namespace": job_namespace(event.herd),
            },
        )
    if event.event_type == "FAIL" and facets.get("error"):
        run_facets["errorMessage"] = _facet("errorMessage", message=str(facets["error"]), programmingLanguage="python")
    inputs = [_input(uri, schemas.get("input"), facets.get("rows_in") if counted else None) for uri in event.inputs]
    invalid = set(facets.get("invalid_outputs") or ())
    outputs = []
    for uri in event.outputs:
        rows = facets.get("rows_invalid") if uri in invalid else facets.get("rows_out")
        outputs.append(_output(uri, None if uri in invalid else schemas.get("output"), rows if counted else None))
    name = f"{facets['pipeline']}.{event.job}" if facets.get("pipeline") else event.job
    return {
        "eventTime": event.event_time.isoformat(),
        "eventType": event.event_type,
        "inputs": inputs,
        "job": {"facets": {}, "name": name, "namespace": job_namespace(event.herd)},
        "outputs": outputs,
        "producer": PRODUCER,
        "run": {"facets": run_facets, "runId": run_uuid(event.run_id)},
        "schemaURL": EVENT_SCHEMA,
    }


def to_json(event: LineageEvent) -> str:
    """``event`` as one line of OpenLineage JSON (keys sorted, as openlineage-python writes them)."""
    return json.dumps(to_dict(event), sort_keys=True, default=str)


def _facet(kind: str, **fields: Any) -> dict[str, Any]:
    """A facet of ``kind`` (a key of FACET_SCHEMAS): its fields without the None ones."""
    found = {k: v for k, v in fields.items() if v is not None}
    return {"_producer": PRODUCER, "_schemaURL": FACET_SCHEMAS[kind], **found}


def _runink_facet(event: LineageEvent, counted: bool) -> dict[str, Any]:
    facets = event.facets
    started, finished = facets.get("started"), facets.get("finished")
    duration = round(finished - started, 3) if isinstance(started, float) and isinstance(finished, float) else None

    def count(key: str) -> int | None:
        value = facets.get(key)
        return value if counted and type(value) is int else None

    return _facet(
        "runink",
        pipeline=facets.get("pipeline"),
        pipelineRun=facets.get("pipeline_run"),
        job=facets.get("job_id"),
        task=facets.get("task_id"),
        node=facets.get("node"),
        attempt=facets.get("attempt") or facets.get("attempts") or None,
        herd=event.herd,
        state=facets.get("state"),
        rowsIn=count("rows_in"),
        rowsValid=count("rows_valid"),
        rowsInvalid=count("rows_invalid"),
        rowsOut=count("rows_out"),
        contract=facets.get("contract"),
        contractHash=facets.get("contract_hash"),
        drift=[d for d in facets.get("drift") or [] if d is not None],
        durationSeconds=duration,
    )


def _schema(fields: Sequence[Sequence[str]] | None) -> dict[str, Any]:
    if not fields:
        return {}
    columns = [{"fields": [], "name": name, "type": kind} for name, kind in fields]
    return {"schema": _facet("schema", fields=columns)}


def _input(uri: str, fields: Sequence[Sequence[str]] | None, rows: Any) -> dict[str, Any]:
    namespace, name = dataset_name(uri)
    input_facets = {}
    if type(rows) is int:
        input_facets["dataQualityMetrics"] = _facet("dataQualityMetrics", columnMetrics={}, rowCount=rows)
    return {"facets": _schema(fields), "inputFacets": input_facets, "name": name, "namespace": namespace}


def _output(uri: str, fields: Sequence[Sequence[str]] | None, rows: Any) -> dict[str, Any]:
    namespace, name = dataset_name(uri)
    output_facets = {}
    if type(rows) is int:
        output_facets["outputStatistics"] = _facet("outputStatistics", rowCount=rows)
    return {"facets": _schema(fields), "name": name, "namespace": namespace, "outputFacets": output_facets}
