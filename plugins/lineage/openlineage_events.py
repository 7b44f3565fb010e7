"""Runink's lineage events as OpenLineage run events (openlineage-python's classes).

One scenario run is one OpenLineage run: START when its first attempt starts, COMPLETE or FAIL
when its last one ended. Its ``runId`` is a UUID derived from the scenario run's id (the same
for START and its end), and a ``parent`` facet names the pipeline run it belongs to. The
source is the input dataset (its schema, and rows read as a data-quality metric); each sink is
an output dataset (the valid rows' schema and count, the invalid sink's count of dead
letters). What OpenLineage has no facet for (attempts, node, job, drift, contract) travels in
a ``runink`` run facet.

Dataset names follow OpenLineage's naming for file systems and object stores: a local file is
namespace ``file`` and its absolute path, an S3 object ``s3://BUCKET`` and its key.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    InputDatasetFacet,
    OutputDatasetFacet,
    RunFacet,
    data_quality_metrics_input_dataset,
    error_message_run,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
)
from openlineage.client.serde import Serde

import runink
from runink.core.model import LineageEvent

#: what every event and facet names as its producer (OpenLineage wants a URI)
PRODUCER = f"https://github.com/runink/runink/tree/v{runink.__version__}"
#: where the ``runink`` run facet's JSON schema is described (docs/lineage.md)
RUNINK_FACET_SCHEMA = "https://github.com/runink/runink/blob/main/docs/lineage.md#the-runink-run-facet"
#: the UUID namespace run ids are derived in (uuid5): stable, so START and its end agree
RUN_NAMESPACE = uuid.UUID("4f0b6f7c-6a43-5d1e-9a55-52756e696e6b")


@attr.define
class RuninkRunFacet(RunFacet):
    """What OpenLineage has no facet for: where and how often the scenario ran."""

    pipeline: str | None = attr.field(default=None)
    pipelineRun: str | None = attr.field(default=None)
    job: str | None = attr.field(default=None)
    task: str | None = attr.field(default=None)
    node: str | None = attr.field(default=None)
    attempt: int | None = attr.field(default=None)
    herd: str | None = attr.field(default=None)
    state: str | None = attr.field(default=None)
    rowsIn: int | None = attr.field(default=None)
    rowsValid: int | None = attr.field(default=None)
    rowsInvalid: int | None = attr.field(default=None)
    rowsOut: int | None = attr.field(default=None)
    contract: str | None = attr.field(default=None)
    contractHash: str | None = attr.field(default=None)
    drift: list[str] | None = attr.field(factory=list)
    durationSeconds: float | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return RUNINK_FACET_SCHEMA


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


def to_run_event(event: LineageEvent) -> RunEvent:
    """``event`` as an OpenLineage run event."""
    facets: Mapping[str, Any] = event.facets
    schemas = facets.get("schemas") or {}
    counted = event.event_type != "START"
    run_facets: dict[str, RunFacet] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=runink.__version__, name="runink", producer=PRODUCER
        ),
        "runink": _runink_facet(event, counted),
    }
    if facets.get("pipeline_run"):
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=run_uuid(str(facets["pipeline_run"]))),
            job=parent_run.Job(namespace=job_namespace(event.herd), name=str(facets.get("pipeline") or "pipeline")),
            producer=PRODUCER,
        )
    if event.event_type == "FAIL" and facets.get("error"):
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(facets["error"]), programmingLanguage="python", producer=PRODUCER
        )
    inputs = [_input(uri, schemas.get("input"), facets.get("rows_in") if counted else None) for uri in event.inputs]
    invalid = set(facets.get("invalid_outputs") or ())
    outputs = []
    for uri in event.outputs:
        rows = facets.get("rows_invalid") if uri in invalid else facets.get("rows_out")
        outputs.append(_output(uri, None if uri in invalid else schemas.get("output"), rows if counted else None))
    name = f"{facets['pipeline']}.{event.job}" if facets.get("pipeline") else event.job
    return RunEvent(
        eventType=RunState(event.event_type),
        eventTime=event.event_time.isoformat(),
        run=Run(runId=run_uuid(event.run_id), facets=run_facets),
        job=Job(namespace=job_namespace(event.herd), name=name),
        producer=PRODUCER,
        inputs=inputs,
        outputs=outputs,
    )


def to_json(event: LineageEvent) -> str:
    """``event`` as one line of OpenLineage JSON."""
    return str(Serde.to_json(to_run_event(event)))


def _runink_facet(event: LineageEvent, counted: bool) -> RuninkRunFacet:
    facets = event.facets
    started, finished = facets.get("started"), facets.get("finished")
    duration = round(finished - started, 3) if isinstance(started, float) and isinstance(finished, float) else None

    def count(key: str) -> int | None:
        value = facets.get(key)
        return value if counted and type(value) is int else None

    return RuninkRunFacet(
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
        drift=list(facets.get("drift") or []),
        durationSeconds=duration,
        producer=PRODUCER,
    )


def _schema(fields: Sequence[Sequence[str]] | None) -> dict[str, Any]:
    if not fields:
        return {}
    columns = [schema_dataset.SchemaDatasetFacetFields(name=name, type=kind) for name, kind in fields]
    return {"schema": schema_dataset.SchemaDatasetFacet(fields=columns, producer=PRODUCER)}


def _input(uri: str, fields: Sequence[Sequence[str]] | None, rows: Any) -> InputDataset:
    namespace, name = dataset_name(uri)
    input_facets: dict[str, InputDatasetFacet] = {}
    if type(rows) is int:
        input_facets["dataQualityMetrics"] = data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet(
            columnMetrics={}, rowCount=rows, producer=PRODUCER
        )
    return InputDataset(namespace=namespace, name=name, facets=_schema(fields), inputFacets=input_facets)


def _output(uri: str, fields: Sequence[Sequence[str]] | None, rows: Any) -> OutputDataset:
    namespace, name = dataset_name(uri)
    output_facets: dict[str, OutputDatasetFacet] = {}
    if type(rows) is int:
        output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=rows, producer=PRODUCER
        )
    return OutputDataset(namespace=namespace, name=name, facets=_schema(fields), outputFacets=output_facets)
