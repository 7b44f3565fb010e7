"""The ``openai`` annotator: dataset, column and record annotations from a chat-completions model.

Built on the ``openai`` client, so OpenAI and any OpenAI-compatible server (vLLM, llama.cpp,
Ollama...) work through ``base_url``. One retry policy, ours: the client's own retries are off.

* Requests are built after masking: the values of ``mask`` fields are replaced before any text
  is made, so they never leave the process.
* At most ``max_in_flight`` requests run at once (a thread pool); records go ``batch_size`` to
  a request; results come back one per record, in input order.
* 429 (honouring Retry-After), 5xx, timeouts and connection errors are retried up to
  ``max_retries`` times with exponential backoff and jitter; other errors are not retried.
* A budget (``max_tokens_per_run``, ``max_cost_per_run``) is checked before each request
  against what was used plus an upper bound of what every request in flight, this one
  included, can still cost (prompt bytes + ``max_output_tokens``): a request that could
  overspend is not sent, and the records it would have carried fail with reason "budget".
* A model answer that does not parse into the expected shape is a failed result holding the
  raw text, never an exception.

A run is the annotator's lifetime (one ``runink annotate`` command): ``usage`` adds up its
requests, tokens and cost.
"""

from __future__ import annotations

import email.utils
import hashlib
import importlib.util
import json
import logging
import os
import random
import string
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

from runink.core.driverload import OptionsSchema
from runink.core.errors import RuninkError, describe_exception
from runink.core.interfaces.annotator import Annotation, Annotator, RecordResult

log = logging.getLogger(__name__)

MASKED = "[masked]"
#: longest sample value sent (characters): a sample shows what a column holds, not all of it
MAX_SAMPLE_VALUE = 200
#: per-message and per-request framing tokens the chat format adds (an upper bound)
FRAMING_TOKENS = 16
#: an answer's bytes, at most: max_output_tokens of this many bytes each (JSON escapes, the
#: answer's framing), never under a MiB; past it the request fails (a 100 MB answer was read whole)
ANSWER_BYTES_PER_TOKEN = 64
MIN_ANSWER_BYTES = 1 << 20
#: what one target (the dataset, a column) of an answer may hold: its description's characters
#: and its tags (each at most MAX_TAG characters); one answer of 200,000 tags was stored whole
MAX_DESCRIPTION = 20_000
MAX_TAGS = 32
MAX_TAG = 200

DEFAULT_DATASET_PROMPT = """\
You document datasets for a data catalog. Given a dataset's name, its schema ({column: type})
and a few sample rows, describe the dataset and each column in one sentence, and tag what
they hold. Tag columns that may hold personal data with "pii" and a kind ("pii:email",
"pii:name", "pii:phone", "pii:address", "pii:id"). Values shown as "[masked]" were hidden
on purpose; judge those columns by name and type.

Answer with one JSON object only, in this shape:
{"dataset": {"description": "...", "tags": ["..."], "confidence": 0.0-1.0},
 "columns": {"COLUMN": {"description": "...", "tags": ["..."], "confidence": 0.0-1.0}}}

Dataset: $dataset
Schema: $schema
Sample rows: $sample
"""

RECORDS_INSTRUCTIONS = """\
Answer with one JSON object only: {"results": [{"id": ID, %s}, ...]}, one entry per record
below, each with the record's id and every field named: %s."""


class AnnotatorError(RuninkError):
    """The annotator's options are wrong (one line naming the option)."""


@dataclass
class Usage:
    """What a run (the annotator's lifetime) used. ``lost_tokens``: the upper bound of requests
    whose answer never came (a timeout after sending may still be billed), counted against the
    budget though no server reported them."""

    requests: int = 0  # answered requests
    attempts: int = 0  # requests sent, retries included
    retries: int = 0
    failed_requests: int = 0  # given up (not retryable, or retries spent)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lost_tokens: int = 0
    cost: float = 0.0
    lost_cost: float = 0.0
    skipped_records: int = 0  # not sent: the budget would have been exceeded
    budget_stop: str | None = None  # why sending stopped, if it did

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens, "cost": round(self.cost, 6)}


@dataclass
class _Answer:
    text: str | None = None
    error: str | None = None  # "request" failures and "budget" refusals
    kind: str = "ok"  # "ok", "request", "budget"


@dataclass
class _Budget:
    used_tokens: int = 0
    used_cost: float = 0.0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    stopped: str | None = None  # the first refusal: no request is sent after it
    lock: threading.Lock = field(default_factory=threading.Lock)


def _int_option(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AnnotatorError(f"openai annotator: option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _float_option(name: str, value: object, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise AnnotatorError(f"openai annotator: option {name} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


class OpenAIAnnotator(Annotator):
    """Annotations from an OpenAI-compatible chat-completions endpoint (see the module's doc)."""

    name: ClassVar[str] = "openai"
    options_schema: ClassVar[OptionsSchema] = {
        "model": str,
        "base_url": str,
        "api_key": str,
        "temperature": float,
        "prompt": str,
        "max_in_flight": int,
        "batch_size": int,
        "timeout": float,
        "max_retries": int,
        "retry_base": float,
        "max_retry_wait": float,
        "max_output_tokens": int,
        "max_tokens_per_run": int,
        "max_cost_per_run": float,
        "price_per_1k_input": float,
        "price_per_1k_output": float,
        "mask": list,
        "json_mode": bool,
    }

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        prompt: str | None = None,
        max_in_flight: int = 8,
        batch_size: int = 10,
        timeout: float = 60.0,
        max_retries: int = 5,
        retry_base: float = 0.5,
        max_retry_wait: float = 60.0,
        max_output_tokens: int = 1024,
        max_tokens_per_run: int | None = None,
        max_cost_per_run: float | None = None,
        price_per_1k_input: float | None = None,
        price_per_1k_output: float | None = None,
        mask: Sequence[str] = (),
        json_mode: bool = True,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise AnnotatorError(f"openai annotator: option model must be a model name, got {model!r}")
        self.model = model.strip()
        self.temperature = _float_option("temperature", temperature, 0.0)
        if self.temperature > 2:
            raise AnnotatorError(f"openai annotator: option temperature must be from 0 to 2, got {temperature!r}")
        self.max_in_flight = _int_option("max_in_flight", max_in_flight, 1)
        self.batch_size = _int_option("batch_size", batch_size, 1)
        self.timeout = _float_option("timeout", timeout, 0.001)
        self.max_retries = _int_option("max_retries", max_retries, 0)
        self.retry_base = _float_option("retry_base", retry_base, 0.0)
        self.max_retry_wait = _float_option("max_retry_wait", max_retry_wait, 0.0)
        self.max_output_tokens = _int_option("max_output_tokens", max_output_tokens, 1)
        self.max_tokens_per_run = (
            None if max_tokens_per_run is None else _int_option("max_tokens_per_run", max_tokens_per_run, 1)
        )
        self.max_cost_per_run = (
            None if max_cost_per_run is None else _float_option("max_cost_per_run", max_cost_per_run, 0.0)
        )
        self.price_per_1k_input = (
            None if price_per_1k_input is None else _float_option("price_per_1k_input", price_per_1k_input, 0.0)
        )
        self.price_per_1k_output = (
            None if price_per_1k_output is None else _float_option("price_per_1k_output", price_per_1k_output, 0.0)
        )
        if self.max_cost_per_run is not None and (self.price_per_1k_input is None or self.price_per_1k_output is None):
            raise AnnotatorError(
                "openai annotator: option max_cost_per_run needs price_per_1k_input and price_per_1k_output"
            )
        if isinstance(mask, str) or not all(isinstance(name, str) for name in mask):
            raise AnnotatorError(f"openai annotator: option mask must be a list of field names, got {mask!r}")
        self.mask = frozenset(mask)
        if not isinstance(json_mode, bool):
            raise AnnotatorError(f"openai annotator: option json_mode must be true or false, got {json_mode!r}")
        self.json_mode = json_mode
        if base_url is not None and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
            raise AnnotatorError(f"openai annotator: option base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if importlib.util.find_spec("openai") is None:
            raise AnnotatorError("openai annotator: the openai package is not installed (pip install 'runink[openai]')")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise AnnotatorError("openai annotator: no API key: set OPENAI_API_KEY or the api_key option")
        if not isinstance(key, str):
            raise AnnotatorError("openai annotator: option api_key must be text")
        self._api_key = key  # never logged, never in a message: _scrub removes it from errors
        self.prompt_path: str | None = None
        if prompt is not None:
            path = Path(prompt).expanduser()
            try:
                self.prompt_template = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise AnnotatorError(f"openai annotator: option prompt: cannot read {str(path)!r}: {exc}") from None
            self.prompt_path = str(path.resolve())
        else:
            self.prompt_template = DEFAULT_DATASET_PROMPT
        self.prompt_hash = hashlib.sha256(self.prompt_template.encode()).hexdigest()
        self.usage = Usage()
        self._budget = _Budget()
        self._usage_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIAnnotator(model={self.model!r}, base_url={self.base_url!r})"

    # --- the two ways in -----------------------------------------------------------------

    def annotate(
        self, dataset: str, schema: Mapping[str, str], sample: Sequence[Mapping[str, Any]]
    ) -> list[Annotation]:
        """Descriptions and tags of ``dataset`` and its columns; a failed answer is one
        annotation (target "dataset", key "failed") with ``extra`` {"failed", "raw", "error"}."""
        rows = [
            {
                key: MASKED if key in self.mask else _shorten(value)
                for key, value in row.items()  # masked before any text is made
            }
            for row in sample
        ]
        variables = {
            "dataset": dataset,
            "schema": json.dumps(dict(schema), ensure_ascii=False),
            "sample": json.dumps(rows, ensure_ascii=False, default=str),
        }
        text = string.Template(self.prompt_template).safe_substitute(variables)
        answer = self._request([{"role": "user", "content": text}])
        if answer.kind != "ok":
            if answer.kind == "budget":
                self._skipped(1)
            return [self._failed_annotation(None, answer.error or answer.kind)]
        return self._parse_dataset_answer(answer.text or "", schema)

    def annotate_records(
        self,
        records: Sequence[Mapping[str, Any]],
        fields: Sequence[str],
        prompt_text: str,
        *,
        mask: Sequence[str] = (),
    ) -> list[RecordResult]:
        """One result per record, in input order: ``fields`` parsed from the model's JSON answer
        (the prompt says what they mean), or failed with the raw text. ``mask`` adds to the
        configured masked fields for this call."""
        if not fields or isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
            raise AnnotatorError(f"openai annotator: fields must be a list of field names, got {fields!r}")
        hidden = self.mask | frozenset(mask)
        masked = [{key: MASKED if key in hidden else value for key, value in r.items()} for r in records]
        batches = [
            list(range(start, min(start + self.batch_size, len(masked))))
            for start in range(0, len(masked), self.batch_size)
        ]
        instructions = RECORDS_INSTRUCTIONS % (", ".join(f'"{f}": ...' for f in fields), ", ".join(fields))

        def run(batch: list[int]) -> list[RecordResult]:
            body = json.dumps([{"id": i, "record": masked[i]} for i in batch], ensure_ascii=False, default=str)
            messages = [
                {"role": "system", "content": instructions},
                {"role": "user", "content": f"{prompt_text}\n\nRecords:\n{body}"},
            ]
            answer = self._request(messages)
            if answer.kind != "ok":
                if answer.kind == "budget":
                    self._skipped(len(batch))
                return [RecordResult(i, None, True, None, answer.error or answer.kind) for i in batch]
            return self._parse_records_answer(answer.text or "", batch, fields)

        results: list[RecordResult] = []
        if not batches:
            return results
        with ThreadPoolExecutor(
            max_workers=min(self.max_in_flight, len(batches)), thread_name_prefix="annotator"
        ) as pool:
            for done in pool.map(run, batches):  # map keeps the batches' order
                results.extend(done)
        return results

    # --- parsing -----------------------------------------------------------------------

    def _failed_annotation(self, raw: str | None, error: str) -> Annotation:
        return Annotation("dataset", "failed", "", 0.0, self.model, {"failed": True, "raw": raw, "error": error})

    def _parse_dataset_answer(self, text: str, schema: Mapping[str, str]) -> list[Annotation]:
        data = _json_object(text)
        if data is None:
            return [self._failed_annotation(text, "parse: the answer is not a JSON object")]
        found: list[Annotation] = []
        try:
            parts: list[tuple[str, Any]] = []
            if "dataset" in data:
                parts.append(("dataset", data["dataset"]))
            columns = data.get("columns", {})
            if not isinstance(columns, dict):
                raise ValueError("columns is not an object")
            parts.extend((f"column:{name}", about) for name, about in columns.items() if name in schema)
            for target, about in parts:
                found.extend(self._about(target, about))
        except (ValueError, TypeError) as exc:
            return [self._failed_annotation(text, f"parse: {exc}")]
        if not found:
            return [self._failed_annotation(text, "parse: no dataset or column of the schema described")]
        return found

    def _about(self, target: str, about: Any) -> list[Annotation]:
        if not isinstance(about, dict):
            raise ValueError(f"{target} is not an object")
        confidence = about.get("confidence", 1.0)
        if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0 <= confidence <= 1:
            raise ValueError(f"{target}: confidence {confidence!r} is not a number from 0 to 1")
        notes: list[Annotation] = []
        description = about.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise ValueError(f"{target}: description is not text")
            text = description[:MAX_DESCRIPTION]
            notes.append(Annotation(target, "description", text, float(confidence), self.model))
        tags = about.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise ValueError(f"{target}: tags is not a list of text")
        if len(tags) > MAX_TAGS or any(len(tag) > MAX_TAG for tag in tags):
            raise ValueError(f"{target}: more than {MAX_TAGS} tags, or one longer than {MAX_TAG} characters")
        notes.extend(Annotation(target, "tag", tag, float(confidence), self.model) for tag in tags)
        return notes

    def _parse_records_answer(self, text: str, batch: list[int], fields: Sequence[str]) -> list[RecordResult]:
        data = _json_object(text)
        entries = data.get("results") if data is not None else None
        if not isinstance(entries, list):
            return [RecordResult(i, None, True, text, 'parse: no "results" list') for i in batch]
        by_id: dict[Any, Any] = {}
        for entry in entries:
            if isinstance(entry, dict) and "id" in entry:
                by_id.setdefault(entry["id"], entry)
        results = []
        for i in batch:
            entry = by_id.get(i, by_id.get(str(i)))
            if entry is None:
                results.append(RecordResult(i, None, True, text, f"parse: no result for record {i}"))
                continue
            missing = [f for f in fields if f not in entry]
            if missing:
                results.append(RecordResult(i, None, True, json.dumps(entry), f"parse: missing {', '.join(missing)}"))
                continue
            results.append(RecordResult(i, {f: entry[f] for f in fields}))
        return results

    # --- requests ----------------------------------------------------------------------

    def client(self) -> Any:
        """The openai client (its own retries off: ours retry)."""
        with self._client_lock:
            if self._client is None:
                from openai import OpenAI

                from runink.plugins.llm.bounded_http import bounded_client

                self._client = OpenAI(
                    api_key=self._api_key,
                    base_url=self.base_url,
                    timeout=self.timeout,
                    max_retries=0,
                    http_client=bounded_client(self.timeout),  # (answers within the timeout and a size)
                )
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _bound(self, messages: list[dict[str, str]]) -> tuple[int, float]:
        """An upper bound of a request's tokens and cost: a token is at least one byte of text."""
        prompt = sum(len(m["content"].encode()) for m in messages) + FRAMING_TOKENS * (len(messages) + 1)
        return prompt + self.max_output_tokens, self._cost(prompt, self.max_output_tokens)

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (self.price_per_1k_input or 0.0) * prompt_tokens / 1000 + (
            self.price_per_1k_output or 0.0
        ) * completion_tokens / 1000

    def _reserve(self, tokens: int, cost: float) -> str | None:
        """Reserve a request's upper bound, or say why the budget refuses it."""
        budget = self._budget
        with budget.lock:
            if budget.stopped is not None:
                return budget.stopped
            refusal = self._refusal(tokens, cost)
            if refusal is not None:
                budget.stopped = refusal  # stop sending: a later, smaller request is not squeezed in
                with self._usage_lock:
                    self.usage.budget_stop = refusal
                log.warning("openai annotator: stopped sending: %s", refusal)
                return refusal
            budget.reserved_tokens += tokens
            budget.reserved_cost += cost
            return None

    def _refusal(self, tokens: int, cost: float) -> str | None:
        """Why a request of this bound would overspend (used + in flight + it), or None.
        Called with the budget's lock held."""
        budget = self._budget
        limit = self.max_tokens_per_run
        if limit is not None and budget.used_tokens + budget.reserved_tokens + tokens > limit:
            return (
                f"budget: max_tokens_per_run {self.max_tokens_per_run} would be exceeded "
                f"({budget.used_tokens} used, {budget.reserved_tokens} in flight, up to {tokens} more)"
            )
        most = self.max_cost_per_run
        if most is not None and budget.used_cost + budget.reserved_cost + cost > most:
            return (
                f"budget: max_cost_per_run {self.max_cost_per_run:g} would be exceeded "
                f"({budget.used_cost:.6f} used, {budget.reserved_cost:.6f} in flight, up to {cost:.6f} more)"
            )
        return None

    def _settle(self, reserved: tuple[int, float], used: tuple[int, float]) -> None:
        budget = self._budget
        with budget.lock:
            budget.reserved_tokens -= reserved[0]
            budget.reserved_cost -= reserved[1]
            budget.used_tokens += used[0]
            budget.used_cost += used[1]

    def _request(self, messages: list[dict[str, str]]) -> _Answer:
        """One chat completion, retried as the policy says; never raises for the server's sake.
        Every attempt (retries too) first reserves its upper bound within the budget."""
        import openai

        from runink.plugins.llm.bounded_http import AnswerTooLarge, limits

        bound = self._bound(messages)
        answer_bytes = max(MIN_ANSWER_BYTES, self.max_output_tokens * ANSWER_BYTES_PER_TOKEN)
        extra: dict[str, Any] = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        attempt = 0
        while True:
            refusal = self._reserve(*bound)
            if refusal is not None:
                return _Answer(error=refusal, kind="budget")
            used = (0, 0.0)
            with self._usage_lock:
                self.usage.attempts += 1
            try:
                # the whole answer within the timeout and its size (not each read: bounded_http.py)
                with self._slots, limits(self.timeout, answer_bytes):
                    response = self.client().chat.completions.create(
                        model=self.model,
                        messages=messages,
                        temperature=self.temperature,
                        max_tokens=self.max_output_tokens,
                        **extra,
                    )
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                # the request may have reached the server (and be billed): count its bound
                used = bound
                with self._usage_lock:
                    self.usage.lost_tokens += bound[0]
                    self.usage.lost_cost += bound[1]
                wait = self._backoff(attempt)
                reason = "timed out" if isinstance(exc, openai.APITimeoutError) else "connection failed"
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status != 429 and status < 500:
                    return self._given_up(f"request refused: HTTP {status}: {self._scrub(str(exc))}")
                wait = self._backoff(attempt)
                if status == 429:
                    after = _retry_after(exc.response.headers)
                    if after is not None:
                        wait = min(after, self.max_retry_wait)
                reason = f"HTTP {status}"
            except AnswerTooLarge as exc:  # (it may have been billed: the bound counts)
                used = bound
                return self._given_up(f"request failed: {exc}")
            except (openai.OpenAIError, ValueError) as exc:  # an answer the client cannot read (not JSON...)
                return self._given_up(f"request failed: {self._scrub(describe_exception(exc))}")
            else:
                prompt_tokens, completion_tokens = _tokens(response, bound)
                cost = self._cost(prompt_tokens, completion_tokens)
                used = (prompt_tokens + completion_tokens, cost)
                with self._usage_lock:
                    self.usage.requests += 1
                    self.usage.prompt_tokens += prompt_tokens
                    self.usage.completion_tokens += completion_tokens
                    self.usage.cost += cost
                return _Answer(text=_content(response))
            finally:
                self._settle(bound, used)
            if attempt >= self.max_retries:
                return self._given_up(f"request failed after {attempt + 1} attempts: {reason}")
            attempt += 1
            with self._usage_lock:
                self.usage.retries += 1
            log.info("openai annotator: %s; retry %d of %d in %.2fs", reason, attempt, self.max_retries, wait)
            time.sleep(wait)

    def _skipped(self, records: int) -> None:
        with self._usage_lock:
            self.usage.skipped_records += records

    def _given_up(self, error: str) -> _Answer:
        with self._usage_lock:
            self.usage.failed_requests += 1
        log.warning("openai annotator: %s", error)
        return _Answer(error=error, kind="request")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half the step fixed, half random (bounded)."""
        step = min(self.max_retry_wait, self.retry_base * 2.0**attempt)
        return step / 2 + random.uniform(0, step / 2)

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "[api key]")[:500]


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_SAMPLE_VALUE:
        return value[:MAX_SAMPLE_VALUE] + "..."
    return value


def _json_object(text: str) -> dict[str, Any] | None:
    """The answer as a JSON object (a ```json fence around it allowed), else None. No regular
    expression: one with a lazy group backtracked for minutes on ``` and 5,000 spaces."""
    body = text.strip()
    if len(body) >= 6 and body.startswith("```") and body.endswith("```"):
        body = body[3:-3].removeprefix("json").strip()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, TypeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    text = headers.get("retry-after-ms")
    if text:
        try:
            return max(0.0, float(text) / 1000)
        except ValueError:
            pass
    text = headers.get("retry-after")
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _tokens(response: Any, bound: tuple[int, float]) -> tuple[int, int]:
    """(prompt, completion) tokens the server reported; without a report, the request's bound."""
    usage = getattr(response, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    # (a negative count would give back budget: a server once reported -10^9 and spent freely)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (prompt, completion)):
        return bound[0], 0
    return cast(int, prompt), cast(int, completion)


def _content(response: Any) -> str:
    try:
        content = response.choices[0].message.content
    except Exception:  # any shape ("choices" an object: KeyError) is an answer that did not parse
        return ""
    return content if isinstance(content, str) else ""
