"""The Annotator driver interface: LLM (or rule-based) annotations of datasets and columns.

An annotator looks at a dataset's schema and a small sample and proposes annotations
(description, tags such as ``pii``, a classification), each with a confidence, which the
governance layer stores beside the lineage. Annotators must send only the sample they are
given and never secrets.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Annotation:
    target: str  # "dataset" or "column:NAME"
    key: str  # e.g. "description", "tag", "classification"
    value: str
    confidence: float = 1.0
    model: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordResult:
    """One record's answer (``Annotator.annotate_records``): the requested ``fields`` parsed, or
    ``failed`` with the ``raw`` model text (``error`` says why: "parse", "budget", "request")."""

    index: int
    fields: dict[str, Any] | None
    failed: bool = False
    raw: str | None = None
    error: str | None = None

    def annotations(self, record_id: str, model: str) -> list[Annotation]:
        """As catalog annotations of record ``record_id``: one per field, or one failed one."""
        target = f"record:{record_id}"
        if self.failed or self.fields is None:
            extra = {"failed": True, "raw": self.raw, "error": self.error}
            return [Annotation(target, "failed", "", 0.0, model, extra)]
        return [
            Annotation(target, key, value if isinstance(value, str) else json.dumps(value), 1.0, model)
            for key, value in self.fields.items()
        ]


class Annotator(ABC):
    GROUP: ClassVar[str] = "runink.annotators"
    name: ClassVar[str] = ""

    @abstractmethod
    def annotate(
        self, dataset: str, schema: Mapping[str, str], sample: Sequence[Mapping[str, Any]]
    ) -> list[Annotation]:
        """Annotations for ``dataset`` given its ``{column: type}`` schema and sample rows."""

    def annotate_records(
        self, records: Sequence[Mapping[str, Any]], fields: Sequence[str], prompt_text: str, *, mask: Sequence[str] = ()
    ) -> list[RecordResult]:
        """One result per record, in input order: ``fields`` from the model's answer to
        ``prompt_text`` about each record (the ``@annotate`` step calls it in the slice), the
        values of ``mask`` fields never sent. A driver that cannot annotate records says so."""
        raise NotImplementedError(f"annotator {self.name or type(self).__name__} does not annotate records")
