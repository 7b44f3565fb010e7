"""Pipelines: the model, the .dsl language, compilation into a DAG of scenarios (slices)."""

from runink.core.pipeline.model import Pipeline, PipelineBuilder, Requirements, Scenario, Sink, Source, StepRef

__all__ = ["Pipeline", "PipelineBuilder", "Requirements", "Scenario", "Sink", "Source", "StepRef"]
