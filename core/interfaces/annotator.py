"""The Annotator driver interface: LLM (or rule-based) annotations of datasets and columns.

An annotator looks at a dataset's schema and a small sample and proposes annotations
(description, tags such as ``pii``, a classification), each with a confidence, which the
governance layer stores beside the lineage. Annotators must send only the sample they are
given and never secrets.
"""

from __future__ import annotations

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


class Annotator(ABC):
    GROUP: ClassVar[str] = "runink.annotators"
    name: ClassVar[str] = ""

    @abstractmethod
    def annotate(
        self, dataset: str, schema: Mapping[str, str], sample: Sequence[Mapping[str, Any]]
    ) -> list[Annotation]:
        """Annotations for ``dataset`` given its ``{column: type}`` schema and sample rows."""
