"""The ``openai`` annotator against a chat-completions server of the test's own (http.server on
127.0.0.1): the openai client is pointed at it through base_url, so requests, retries, the
budget and masking are checked on what really goes over the wire."""

from __future__ import annotations

import importlib.metadata
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixture_types import CliRunner

pytest.importorskip("openai", reason="the openai extra is not installed (pip install -e '.[openai]')")

from runink.core.dataplane.annotate import CHUNK_BYTES, MAX_RECORD_BYTES, AnnotateStage
from runink.core.dataplane.spec import AnnotateSpec
from runink.core.driverload import construct
from runink.core.errors import DriverLoadError
from runink.core.interfaces.annotator import Annotator, RecordResult
from runink.plugins.llm.openai_annotator import AnnotatorError, OpenAIAnnotator

REPO = Path(__file__).resolve().parent.parent
FIELDS = ["summary", "sensitivity"]

#: what the server does for one request, instead of answering
Action = tuple[str, Any]


class FakeChat:
    """POST /v1/chat/completions. Answers record batches with one result per id ("s<id>") and
    dataset prompts with a description of each column of their schema. ``script`` holds what the
    next requests get instead (("status", (code, headers, body)), ("sleep", seconds),
    ("text", answer)); ``delay(body)`` is slept before a normal answer."""

    def __init__(self) -> None:
        self.script: list[Action] = []
        self.bodies: list[dict[str, Any]] = []
        self.raw_bodies: list[bytes] = []
        self.times: list[float] = []
        self.usage: list[tuple[int, int]] = []  # (prompt, completion) tokens reported
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay: Callable[[dict[str, Any]], float] = lambda body: 0.0
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends the sleeps of requests meant to time out
        chat = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between headers and body

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with chat.lock:
                    chat.in_flight += 1
                    chat.max_in_flight = max(chat.max_in_flight, chat.in_flight)
                    chat.raw_bodies.append(raw)
                    chat.times.append(time.monotonic())
                    action = chat.script.pop(0) if chat.script else ("answer", None)
                try:
                    self._serve(raw, action)
                finally:
                    with chat.lock:
                        chat.in_flight -= 1

            def _serve(self, raw: bytes, action: Action) -> None:
                body = json.loads(raw)
                with chat.lock:
                    chat.bodies.append(body)
                kind, arg = action
                if self.path != "/v1/chat/completions":
                    self._send(404, {}, b'{"error": {"message": "not found"}}')
                elif kind == "status":
                    code, headers, text = arg
                    self._send(code, headers, text.encode())
                elif kind == "sleep":
                    chat.release.wait(arg)
                    self._answer(raw, chat.answer_for(body))
                elif kind == "text":
                    self._answer(raw, arg)
                elif kind == "usage":  # (a normal answer claiming these token counts)
                    self._answer(raw, chat.answer_for(body), usage=arg)
                elif kind == "drip":  # (its Content-Length, then a byte every ``gap`` seconds)
                    size, gap = arg
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    for _ in range(size):
                        if chat.release.wait(gap):
                            return
                        try:
                            self.wfile.write(b" ")
                            self.wfile.flush()
                        except (BrokenPipeError, ConnectionResetError):
                            return
                else:
                    time.sleep(chat.delay(body))
                    self._answer(raw, chat.answer_for(body))

            def _answer(self, raw: bytes, content: str, usage: tuple[int, int] | None = None) -> None:
                usage = usage or (len(raw) // 4, len(content.encode()) // 4)
                with chat.lock:
                    chat.usage.append(usage)
                answer = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "test-model",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": usage[0],
                        "completion_tokens": usage[1],
                        "total_tokens": sum(usage),
                    },
                }
                self._send(200, {}, json.dumps(answer).encode())

            def _send(self, code: int, headers: dict[str, str], data: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def answer_for(body: dict[str, Any]) -> str:
        content = body["messages"][-1]["content"]
        if "Records:\n" in content:
            records = json.loads(content.split("Records:\n", 1)[1])
            return json.dumps(
                {"results": [{"id": r["id"], "summary": f"s{r['id']}", "sensitivity": "low"} for r in records]}
            )
        schema = json.loads(re.search(r"^Schema: (.*)$", content, re.MULTILINE).group(1))  # type: ignore[union-attr]
        columns = {
            name: {"description": f"the {name}", "tags": ["pii:email"] if "email" in name else [], "confidence": 0.8}
            for name in schema
        }
        return json.dumps(
            {"dataset": {"description": "test data", "tags": ["orders"], "confidence": 0.9}, "columns": columns}
        )

    def requests_seen(self) -> int:
        with self.lock:
            return len(self.raw_bodies)


@pytest.fixture
def chat() -> Iterator[FakeChat]:
    server = FakeChat()
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


def annotator(chat: FakeChat, **options: Any) -> OpenAIAnnotator:
    options.setdefault("retry_base", 0.01)
    return OpenAIAnnotator(base_url=chat.url, api_key="test-key", **options)


def records(count: int) -> list[dict[str, Any]]:
    return [
        {"order_id": f"O-{i:06d}", "amount": i * 1.5, "customer_email": f"person{i}@example.com"} for i in range(count)
    ]


def test_records_are_answered_in_input_order_in_batches(chat: FakeChat) -> None:
    # the first batches answer last: order must come from the input, not from completion
    chat.delay = lambda body: 0.15 if '"id": 0,' in body["messages"][-1]["content"] else 0.0
    ann = annotator(chat, batch_size=4, max_in_flight=4)
    results = ann.annotate_records(records(25), FIELDS, "Summarise each order.")
    assert [r.index for r in results] == list(range(25))
    assert [r.fields for r in results] == [{"summary": f"s{i}", "sensitivity": "low"} for i in range(25)]
    assert not any(r.failed for r in results)
    assert chat.requests_seen() == 7  # ceil(25 / 4)
    sent = [json.loads(b["messages"][-1]["content"].split("Records:\n", 1)[1]) for b in chat.bodies]
    assert sorted(len(batch) for batch in sent) == [1, 4, 4, 4, 4, 4, 4]
    assert chat.bodies[0]["model"] == "gpt-4o-mini" and chat.bodies[0]["response_format"] == {"type": "json_object"}
    assert ann.usage.requests == 7 and ann.usage.retries == 0
    assert ann.usage.prompt_tokens == sum(p for p, _ in chat.usage) > 0
    assert ann.usage.completion_tokens == sum(c for _, c in chat.usage) > 0
    assert ann.usage.to_json()["total_tokens"] == ann.usage.total_tokens


def test_requests_in_flight_are_bounded(chat: FakeChat) -> None:
    chat.delay = lambda body: 0.05
    ann = annotator(chat, batch_size=1, max_in_flight=3)
    results = ann.annotate_records(records(15), FIELDS, "Summarise.")
    assert len(results) == 15 and not any(r.failed for r in results)
    assert 2 <= chat.max_in_flight <= 3  # concurrent, and never more than asked


def test_the_bound_holds_across_calls_from_several_threads(chat: FakeChat) -> None:
    chat.delay = lambda body: 0.05
    ann = annotator(chat, batch_size=1, max_in_flight=2)
    done: list[int] = []
    callers = [
        threading.Thread(target=lambda: done.append(len(ann.annotate_records(records(4), FIELDS, "S."))))
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert done == [4, 4, 4] and chat.requests_seen() == 12
    assert chat.max_in_flight == 2


def test_retry_after_is_read_in_seconds_milliseconds_or_as_a_date() -> None:
    from email.utils import formatdate

    from runink.plugins.llm.openai_annotator import _retry_after

    assert _retry_after({"retry-after": "3"}) == 3.0
    assert _retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert 8 <= (_retry_after({"retry-after": formatdate(time.time() + 10, usegmt=True)}) or 0) <= 10
    assert _retry_after({"retry-after": "soon"}) is None and _retry_after({}) is None


def test_masked_values_never_reach_the_server(chat: FakeChat) -> None:
    rows = records(6)
    ann = annotator(chat, batch_size=2, mask=["customer_email"])
    results = ann.annotate_records(rows, FIELDS, "Summarise.", mask=["order_id"])
    assert not any(r.failed for r in results)
    dataset = ann.annotate("orders", {"order_id": "string", "customer_email": "string"}, rows[:3])
    assert any(n.target == "column:customer_email" for n in dataset)
    wire = b"".join(chat.raw_bodies)
    assert chat.requests_seen() == 4
    for row in rows:
        assert row["customer_email"].encode() not in wire
    # order_id was masked for the records call only: the dataset's sample shows it
    assert b"O-000000" not in b"".join(chat.raw_bodies[:3]) and b"O-000000" in chat.raw_bodies[3]
    assert b"[masked]" in chat.raw_bodies[3] and b"person0" not in chat.raw_bodies[3]


def test_a_429_is_retried_after_its_retry_after(chat: FakeChat) -> None:
    chat.script = [("status", (429, {"Retry-After": "1"}, '{"error": {"message": "slow down"}}'))]
    ann = annotator(chat, batch_size=10)
    results = ann.annotate_records(records(3), FIELDS, "Summarise.")
    assert not any(r.failed for r in results)
    assert chat.requests_seen() == 2 and ann.usage.retries == 1
    waited = chat.times[1] - chat.times[0]
    assert 0.9 <= waited < 2.0  # Retry-After, not the 10 ms backoff


def test_5xx_are_retried_then_given_up(chat: FakeChat) -> None:
    error: tuple[int, dict[str, str], str] = (500, {}, '{"error": {"message": "boom"}}')
    chat.script = [("status", error), ("status", (503, {}, "{}"))]
    ann = annotator(chat)
    assert not any(r.failed for r in ann.annotate_records(records(2), FIELDS, "Summarise."))
    assert chat.requests_seen() == 3 and ann.usage.retries == 2

    chat.script = [("status", error)] * 3
    ann = annotator(chat, max_retries=1)
    results = ann.annotate_records(records(2), FIELDS, "Summarise.")
    assert [(r.failed, r.error) for r in results] == [(True, "request failed after 2 attempts: HTTP 500")] * 2
    assert chat.requests_seen() == 5 and ann.usage.failed_requests == 1
    chat.script = []


def test_other_4xx_are_not_retried_and_never_show_the_key(chat: FakeChat) -> None:
    chat.script = [("status", (401, {}, '{"error": {"message": "bad key sk-very-secret-1"}}'))]
    ann = OpenAIAnnotator(base_url=chat.url, api_key="sk-very-secret-1", retry_base=0.01)
    results = ann.annotate_records(records(1), FIELDS, "Summarise.")
    assert results[0].failed and results[0].error is not None
    assert results[0].error.startswith("request refused: HTTP 401") and "sk-very-secret-1" not in results[0].error
    assert "[api key]" in results[0].error
    assert chat.requests_seen() == 1
    assert "sk-very-secret-1" not in repr(ann)


def test_a_request_that_times_out_is_retried(chat: FakeChat) -> None:
    chat.script = [("sleep", 5.0)]
    ann = annotator(chat, timeout=0.3)
    started = time.monotonic()
    results = ann.annotate_records(records(2), FIELDS, "Summarise.")
    elapsed = time.monotonic() - started
    assert not any(r.failed for r in results)
    assert chat.requests_seen() == 2 and ann.usage.retries == 1 and ann.usage.requests == 1
    assert ann.usage.lost_tokens > 0  # the lost attempt counts against the budget
    assert elapsed < 2.0


def test_an_answer_that_drips_is_cut_at_the_timeout_not_per_read(chat: FakeChat) -> None:
    """A byte every 0.1 s kept a request open as long as the server went on (httpx's timeout
    is per read): the whole answer must come within ``timeout``."""
    chat.script = [("drip", (200, 0.1))]
    ann = annotator(chat, timeout=0.6, max_retries=0)
    started = time.monotonic()
    (result,) = ann.annotate_records(records(1), FIELDS, "Summarise.")
    assert result.failed and result.error == "request failed after 1 attempts: timed out"
    assert time.monotonic() - started < 3.0  # (20 s of drip otherwise)
    assert ann.usage.lost_tokens > 0


def test_an_answer_past_its_size_fails_at_once_and_is_not_retried(chat: FakeChat) -> None:
    chat.script = [("status", (200, {}, "x" * (3 << 20)))]
    ann = annotator(chat, max_output_tokens=100)  # 1 MiB at most (100 tokens x 64 bytes < 1 MiB)
    (result,) = ann.annotate_records(records(1), FIELDS, "Summarise.")
    assert result.failed and result.error == "request failed: the answer passed 1,048,576 bytes"
    assert chat.requests_seen() == 1 and ann.usage.retries == 0


def test_a_redirect_is_not_followed(chat: FakeChat) -> None:
    """A 307 re-sent the records (with the redirect's body) to the host it named."""
    chat.script = [("status", (307, {"Location": chat.url + "/chat/completions"}, "{}"))]
    (result,) = annotator(chat).annotate_records(records(1), FIELDS, "Summarise.")
    assert result.failed and (result.error or "").startswith("request refused: HTTP 307")
    assert chat.requests_seen() == 1


def test_negative_token_counts_give_no_budget_back(chat: FakeChat) -> None:
    """A server reporting -10^9 tokens once had every later request sent past the budget."""
    first = annotator(chat, batch_size=1)
    first.annotate_records(records(1), FIELDS, "Summarise.")
    per_request = first.usage.total_tokens
    bound = first._bound([{"role": "user", "content": "x" * 700}])[0]
    chat.script = [("usage", (-(10**9), 0))] + [("usage", (10**6, 10**6))] * 10
    ann = annotator(chat, batch_size=1, max_in_flight=1, max_tokens_per_run=3 * bound)
    results = ann.annotate_records(records(6), FIELDS, "Summarise.")
    assert chat.requests_seen() - 1 <= 3 and ann.usage.total_tokens > 0 and per_request > 0
    assert any(r.failed and (r.error or "").startswith("budget:") for r in results)


def test_a_fence_of_spaces_and_an_odd_shape_are_failed_answers_not_a_hang_or_a_crash(chat: FakeChat) -> None:
    from runink.plugins.llm.openai_annotator import _json_object

    assert _json_object("```" + " " * 5_000) is None  # (a lazy regular expression took 48 s on it)
    assert _json_object('```json\n{"a": 1}\n```') == {"a": 1} and _json_object("``````") is None
    chat.script = [("status", (200, {}, json.dumps({"choices": {"0": 1}})))]
    (result,) = annotator(chat).annotate_records(records(1), FIELDS, "Summarise.")
    assert result.failed  # (a KeyError failed the whole scenario)


def test_a_dataset_answer_holds_a_bounded_description_and_tags(chat: FakeChat) -> None:
    """One answer of a 5 MB description and 200,000 tags was stored whole in the catalog."""
    from runink.plugins.llm.openai_annotator import MAX_DESCRIPTION

    huge = {"dataset": {"description": "d" * 100_000, "tags": ["t"] * 10, "confidence": 0.5}}
    chat.script = [("text", json.dumps(huge))]
    ann = annotator(chat)
    (note, *tags) = ann.annotate("orders", {"order_id": "string"}, [])
    assert note.key == "description" and len(note.value) == MAX_DESCRIPTION and len(tags) == 10
    chat.script = [("text", json.dumps({"dataset": {"description": "d", "tags": ["t"] * 40}}))]
    (failed,) = ann.annotate("orders", {"order_id": "string"}, [])
    assert failed.key == "failed" and "more than 32 tags" in failed.extra["error"]


def test_malformed_answers_are_failed_results_with_the_raw_text(chat: FakeChat) -> None:
    partial = json.dumps({"results": [{"id": 2, "summary": "ok", "sensitivity": "low"}, {"id": 3, "summary": "no"}]})
    chat.script = [("text", "I think these orders are fine."), ("text", partial)]
    ann = annotator(chat, batch_size=2, max_in_flight=1)
    results = ann.annotate_records(records(4), FIELDS, "Summarise.")
    assert [(r.failed, r.raw) for r in results[:2]] == [(True, "I think these orders are fine.")] * 2
    assert results[0].error == 'parse: no "results" list'
    assert results[2].fields == {"summary": "ok", "sensitivity": "low"} and not results[2].failed
    assert results[3].failed and results[3].error == "parse: missing sensitivity"
    assert results[3].raw == json.dumps({"id": 3, "summary": "no"})

    chat.script = [("status", (200, {}, "<html>not the API</html>"))]  # a body the client cannot read
    (unreadable,) = ann.annotate_records(records(1), FIELDS, "Summarise.")
    assert unreadable.failed and (unreadable.error or "").startswith("request failed: JSONDecodeError")

    chat.script = [("text", '```json\n{"dataset": "not an object"}\n```')]
    notes = ann.annotate("orders", {"order_id": "string"}, [])
    assert len(notes) == 1 and notes[0].key == "failed" and notes[0].extra["failed"] is True
    assert notes[0].extra["raw"] == '```json\n{"dataset": "not an object"}\n```'
    assert notes[0].extra["error"] == "parse: dataset is not an object"


def test_annotate_describes_the_dataset_and_its_columns(chat: FakeChat) -> None:
    ann = annotator(chat)
    notes = ann.annotate("orders", {"order_id": "string", "customer_email": "string"}, records(2))
    found = {(n.target, n.key, n.value, n.confidence) for n in notes}
    assert found == {
        ("dataset", "description", "test data", 0.9),
        ("dataset", "tag", "orders", 0.9),
        ("column:order_id", "description", "the order_id", 0.8),
        ("column:customer_email", "description", "the customer_email", 0.8),
        ("column:customer_email", "tag", "pii:email", 0.8),
    }
    assert all(n.model == "gpt-4o-mini" for n in notes)
    assert ann.prompt_path is None and len(ann.prompt_hash) == 64


def test_a_prompt_template_file_is_used(chat: FakeChat, tmp_path: Path) -> None:
    template = tmp_path / "describe.txt"
    template.write_text("Describe $dataset.\nSchema: $schema\nSample: $sample\n")
    ann = annotator(chat, prompt=str(template))
    ann.annotate("sales", {"id": "int64"}, [{"id": 7}])
    assert (
        chat.bodies[0]["messages"][-1]["content"] == 'Describe sales.\nSchema: {"id": "int64"}\nSample: [{"id": 7}]\n'
    )
    assert ann.prompt_path == str(template.resolve())


def test_the_token_budget_stops_before_it_is_exceeded(chat: FakeChat) -> None:
    one = annotator(chat, batch_size=2)
    one.annotate_records(records(2), FIELDS, "Summarise.")
    per_request = one.usage.total_tokens
    budget = per_request * 4 + 200 + one._bound([{"role": "user", "content": "x" * 700}])[0]  # room for a few
    ann = annotator(chat, batch_size=2, max_in_flight=2, max_output_tokens=200, max_tokens_per_run=budget)
    results = ann.annotate_records(records(40), FIELDS, "Summarise.")  # 20 requests would cost far more
    assert per_request * 20 > budget
    sent = chat.requests_seen() - 1
    assert 0 < sent < 20
    assert ann.usage.total_tokens <= budget
    assert ann.usage.budget_stop is not None and ann.usage.budget_stop.startswith("budget: max_tokens_per_run")
    skipped = [r for r in results if r.failed]
    assert skipped and all(r.error == ann.usage.budget_stop or (r.error or "").startswith("budget:") for r in skipped)
    assert ann.usage.skipped_records == len(skipped) == 40 - 2 * sent
    assert [r.index for r in results] == list(range(40))


def test_the_cost_budget_stops_before_it_is_exceeded(chat: FakeChat) -> None:
    ann = annotator(
        chat,
        batch_size=1,
        max_in_flight=1,
        max_output_tokens=100,
        price_per_1k_input=1.0,
        price_per_1k_output=2.0,
        max_cost_per_run=1.5,
    )
    results = ann.annotate_records(records(30), FIELDS, "Summarise.")
    assert 0 < chat.requests_seen() < 30
    assert ann.usage.cost <= 1.5
    expected = sum(p / 1000 + 2 * c / 1000 for p, c in chat.usage)
    assert ann.usage.cost == pytest.approx(expected)
    assert results[-1].failed and (results[-1].error or "").startswith("budget: max_cost_per_run 1.5")


def test_options_are_checked_with_one_line_naming_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(AnnotatorError, match="no API key: set OPENAI_API_KEY or the api_key option"):
        OpenAIAnnotator()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert OpenAIAnnotator()._api_key == "sk-from-env"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_in_flight": 0}, "option max_in_flight must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "option batch_size must be an integer >= 1, got 2.5"),
        ({"temperature": 3}, "option temperature must be from 0 to 2, got 3"),
        ({"max_cost_per_run": 1.0}, "option max_cost_per_run needs price_per_1k_input and price_per_1k_output"),
        ({"mask": "email"}, "option mask must be a list of field names, got 'email'"),
        ({"base_url": "localhost:8000"}, "option base_url must be an http(s) URL, got 'localhost:8000'"),
        ({"prompt": "/nonexistent/p.txt"}, "option prompt: cannot read '/nonexistent/p.txt'"),
    ]
    for options, message in cases:
        with pytest.raises(AnnotatorError, match=re.escape(message)):
            OpenAIAnnotator(**options)
    # through the driver loader, as configuration builds it: text converted, unknown refused
    built = construct(Annotator, "openai", OpenAIAnnotator, {"max_in_flight": "4", "mask": "a, b"})
    assert isinstance(built, OpenAIAnnotator) and built.max_in_flight == 4 and built.mask == {"a", "b"}
    with pytest.raises(DriverLoadError, match="bad options \\['modle'\\]"):
        construct(Annotator, "openai", OpenAIAnnotator, {"modle": "x"})


def test_annotations_of_a_real_run_are_stored_in_the_catalog(
    run_cli: CliRunner, chat: FakeChat, tmp_path: Path, data_home: Path
) -> None:
    """The command's steps in-process: the orders example fills the catalog, its silver output is
    read through its storage driver, annotated and stored, and read back."""
    import shutil

    from runink.plugins.lineage.catalog.annotate_cli import read_sample
    from runink.plugins.lineage.catalog.annotations import add_annotations, list_annotations
    from runink.plugins.lineage.catalog.queries import find_dataset
    from runink.plugins.lineage.catalog.store import engine_for, migrate

    project = tmp_path / "orders"
    shutil.copytree(
        REPO / "examples" / "orders", project, ignore=shutil.ignore_patterns("out", "__pycache__", ".runink")
    )
    done = run_cli("run", "orders.dsl", cwd=project)
    assert done.returncode == 0, done.stderr
    engine = engine_for(f"sqlite:///{data_home / 'catalog.db'}")
    migrate(engine)
    dataset = find_dataset(engine, "out/silver/orders.parquet", None, base=project)
    schema, sample = read_sample(dataset.uri, 3)
    assert len(sample) == 3 and "customer_email" in schema and schema["amount"] == "decimal128(12, 2)"
    ann = annotator(chat, mask=["customer_email"])
    notes = ann.annotate(dataset.uri, schema, sample)
    stored = add_annotations(
        engine,
        dataset,
        notes,
        model=ann.model,
        prompt_path=ann.prompt_path,
        prompt_hash=ann.prompt_hash,
        author="tester",
    )
    chat.script = [("text", "not json")]
    failed = ann.annotate(dataset.uri, schema, sample)
    add_annotations(engine, dataset, failed, model=ann.model, prompt_path=None, prompt_hash=ann.prompt_hash)
    listed = list_annotations(engine, dataset)
    assert len(listed) == stored + 1 == len(notes) + 1
    assert {(n["target"], n["key"], n["value"]) for n in listed[:-1]} >= {
        ("dataset", "description", "test data"),
        ("column:customer_email", "tag", "pii:email"),
    }
    assert all(n["herd"] == "finance" and n["model"] == "gpt-4o-mini" and n["author"] == "tester" for n in listed[:-1])
    assert listed[0]["prompt_hash"] == ann.prompt_hash and not listed[0]["failed"]
    assert listed[-1]["failed"] and listed[-1]["raw"] == "not json"
    assert listed[-1]["value"] == "parse: the answer is not a JSON object"
    for row in sample:
        assert str(row["customer_email"]).encode() not in b"".join(chat.raw_bodies)


def _commands_and_driver_installed() -> bool:
    hooks = {ep.name for ep in importlib.metadata.entry_points(group="runink")}
    drivers = {ep.name for ep in importlib.metadata.entry_points(group="runink.annotators")}
    return "catalog-annotations" in hooks and "openai" in drivers


@pytest.mark.skipif(
    not _commands_and_driver_installed(),
    reason="entry points runink: catalog-annotations and runink.annotators: openai are not installed yet",
)
def test_runink_annotate_and_annotations(run_cli: CliRunner, chat: FakeChat, tmp_path: Path) -> None:
    import shutil

    project = tmp_path / "orders"
    shutil.copytree(
        REPO / "examples" / "orders", project, ignore=shutil.ignore_patterns("out", "__pycache__", ".runink")
    )
    (project / "runink.toml").write_text(
        f'[annotator]\noptions = {{ base_url = "{chat.url}", mask = ["customer_email"], retry_base = 0.01 }}\n'
    )
    env = {"OPENAI_API_KEY": "test-key"}
    assert run_cli("run", "orders.dsl", cwd=project, env=env).returncode == 0
    out = run_cli("annotate", "out/silver/orders.parquet", "--sample", "3", "--json", cwd=project, env=env)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["herd"] == "finance" and answer["failed"] == 0 and answer["usage"]["requests"] == 1
    assert {"target": "column:customer_email", "key": "tag", "value": "pii:email", "confidence": 0.8} in answer[
        "annotations"
    ]
    assert b"[masked]" in chat.raw_bodies[0]
    listed = run_cli("annotations", "out/silver/orders.parquet", "--json", cwd=project, env=env)
    assert listed.returncode == 0, listed.stderr
    notes = json.loads(listed.stdout)["annotations"]
    assert len(notes) == answer["stored"] and notes[0]["model"] == "gpt-4o-mini"

    # the raw source, with no mask option now: the fields its contract marks pii (customer_email,
    # as the catalog learnt from the run that read it) are masked in what is sent, though the
    # sample is the CSV as it is on disk
    (project / "runink.toml").write_text(f'[annotator]\noptions = {{ base_url = "{chat.url}", retry_base = 0.01 }}\n')
    raw = run_cli("annotate", "data/orders.csv", "--sample", "5", "--json", cwd=project, env=env)
    assert raw.returncode == 0, raw.stderr
    sent = chat.raw_bodies[-1]
    assert b"[masked]" in sent and not re.search(rb"[a-z0-9._]+@[a-z0-9.]+\.[a-z]+", sent)

    chat.script = [("text", "not json")]
    bad = run_cli("annotate", "out/silver/orders.parquet", "--model", "other-model", cwd=project, env=env)
    assert bad.returncode == 1 and "parse: the answer is not a JSON object; stored as failed" in bad.stderr
    assert chat.bodies[-1]["model"] == "other-model"
    notes = json.loads(run_cli("annotations", "out/silver/orders.parquet", "--json", cwd=project, env=env).stdout)[
        "annotations"
    ]
    assert notes[-1]["failed"] and notes[-1]["raw"] == "not json" and notes[-1]["model"] == "other-model"


def test_the_annotate_step_annotates_records_in_the_slice(
    run_cli: CliRunner, chat: FakeChat, orders: Path, data_home: Path
) -> None:
    """`@annotate` in a scenario: each valid record goes to the model (its masked fields masked
    already), its fields become columns of the output, and the catalog keeps the run's
    annotations: input -> annotating step run -> annotations of the output."""
    (orders / "prompts").mkdir()
    (orders / "prompts" / "classify.txt").write_text("Summarise each order and rate how sensitive it is.\n")
    (orders / "annotate.dsl").write_text(
        '@herd("finance")\n'
        "Feature: Annotated orders\n"
        "  @network\n"
        "  Scenario: Classify\n"
        '    @source("csv://data/orders.csv", contract="contracts:Order")\n'
        '    @annotate(prompt="prompts/classify.txt", fields=["summary", "sensitivity"],'
        ' columns=["order_id", "customer_email", "amount"])\n'
        '    @sink("parquet://out/annotated.parquet")\n'
        '    @sink("jsonl://out/dlq.jsonl", when="invalid")\n'
    )
    (orders / "runink.toml").write_text(
        f'[annotator]\noptions = {{ base_url = "{chat.url}", api_key = "test-key", batch_size = 100 }}\n'
    )
    contract = orders / "contracts.py"  # order_id marked pii (not mask): it stays in the output, not sent
    contract.write_text(contract.read_text().replace('Field(regex=r"O-', 'Field(pii=True, regex=r"O-'))
    # the process executor: a linux slice's network (slirp4netns) refuses the host's loopback,
    # where this test's model listens
    out = run_cli("run", "annotate.dsl", "--set", "executor.driver=process", "--json", cwd=orders)
    assert out.returncode == 0, out.stderr
    table = pq.read_table(orders / "out" / "annotated.parquet")
    assert table.num_rows == 980 and {"summary", "sensitivity", "_runink_annotation_error"} <= set(table.column_names)
    assert set(table.column("sensitivity").to_pylist()) == {"low"} and table.column("summary").null_count == 0
    assert chat.requests_seen() == 10  # 980 records, 100 a request
    sent = b"".join(chat.raw_bodies)
    assert b"****.com" in sent and not re.search(rb"[a-z0-9.]+@[a-z0-9.]+\.com", sent)  # masked by the contract
    assert b"quantity" not in sent  # only the columns named
    assert not re.search(rb"O-[0-9]{6}", sent) and b'order_id\\": \\"[masked]' in sent  # a pii field
    # the API key reached the slice (the driver refuses to start without one) through its
    # environment, not through its spec file, which stays on disk with the run
    specs = list((data_home / "runs").rglob("slice.json"))
    assert specs and not [p for p in specs if "test-key" in p.read_text()]
    page = json.loads(run_cli("annotations", "out/annotated.parquet", "--json", cwd=orders).stdout)
    assert len(page["annotations"]) == 1000 and page["next"] == page["annotations"][-1]["id"]  # a page at a time
    more = run_cli("annotations", "out/annotated.parquet", "--after", str(page["next"]), "--json", cwd=orders)
    notes = page["annotations"] + json.loads(more.stdout)["annotations"]
    summary = next(n for n in notes if n["key"] == "annotated")
    assert summary["value"].startswith("980 records, 0 failed; ") and summary["prompt_path"] == "prompts/classify.txt"
    assert " tokens, 10 requests, cost " in summary["value"]  # what the run spent
    records = [n for n in notes if n["target"].startswith("record:")]
    assert len(records) == 980 * 2 and {n["key"] for n in records} == {"summary", "sensitivity"}  # every record's
    assert {n["target"] for n in records} == {f"record:{i}" for i in range(980)}
    shown = json.loads(run_cli("catalog", "show", "out/annotated.parquet", "--json", cwd=orders).stdout)
    (wrote,) = [r for r in shown["runs"] if r["direction"] == "wrote"]
    assert {n["run"] for n in notes} == {wrote["run"]}  # the annotating step run, which read the source


def test_an_annotate_step_is_checked_at_compile_time(run_cli: CliRunner, orders: Path) -> None:
    body = (
        '@herd("finance")\nFeature: F\n  Scenario: S\n    @source("csv://data/orders.csv")\n'
        "    {annotate}\n"
        '    @sink("csv://out/x.csv")\n'
    )
    for annotate, why in (
        ('@annotate(prompt="nope.txt", fields=["a"])', "prompt file nope.txt does not exist"),
        ('@annotate(prompt="orders.dsl", fields=[])', "fields must be a list of field names"),
        ('@annotate(prompt="orders.dsl", fields=["a b"])', "field 'a b' is not a name"),
        ('@annotate(prompt="orders.dsl", fields=["a"])', "needs @network"),
    ):
        (orders / "bad.dsl").write_text(body.replace("{annotate}", annotate))
        out = run_cli("run", "bad.dsl", cwd=orders)
        assert out.returncode == 2 and why in out.stderr and "bad.dsl:5" in out.stderr, out.stderr


class _Echo:
    """An annotator that answers each record with long non-ASCII text, every third one failed."""

    model = "echo"

    def annotate_records(
        self, records: list[dict[str, Any]], fields: list[str], prompt: str, *, mask: tuple[str, ...] = ()
    ) -> list[RecordResult]:
        results = []
        for index, record in enumerate(records):
            if record["n"] % 3 == 0:
                results.append(RecordResult(index, None, failed=True, raw="ö" * 30_000, error="parse"))
            else:
                results.append(RecordResult(index, {name: "é" * (record["n"] * 97) for name in fields}))
        return results


def test_the_annotate_step_masks_a_contracts_pii_fields_too(chat: FakeChat) -> None:
    """A field the contract marks pii (not mask: its value is kept in the output) went to the
    model in clear; the slice gives the step its contract's pii fields to mask."""
    spec = AnnotateSpec("p", "prompts/p.txt", "h" * 64, ["summary", "sensitivity"])
    stage = AnnotateStage(spec, annotator(chat), mask=("customer_email",))
    batch = pa.RecordBatch.from_pylist(records(3))
    stage.annotate(batch)
    sent = b"".join(chat.raw_bodies)
    assert b"person1@example.com" not in sent and b"[masked]" in sent and b"O-000001" in sent


def test_every_record_annotation_is_reported_in_bounded_chunks_in_order() -> None:
    """What the slice reports: each record's annotation once, in order, in report lines of at
    most CHUNK_BYTES (one record's JSON at most MAX_RECORD_BYTES, non-ASCII text included),
    so the runner and the servers' bound (64 KiB of facets) always take them."""
    spec = AnnotateSpec("p", "prompts/p.txt", "h" * 64, ["summary", "tags"])
    stage = AnnotateStage(spec, _Echo())  # type: ignore[arg-type]
    reported: list[dict[str, Any]] = []
    seen = 0
    for start in range(0, 600, 200):
        batch = pa.RecordBatch.from_pydict({"n": list(range(start, start + 200))})
        stage.annotate(batch, seen)
        seen += batch.num_rows
        reported.extend(stage.chunks())
    assert len(reported) > 10 and all(len(json.dumps(c)) <= CHUNK_BYTES + 2048 for c in reported)
    entries = [e for c in reported for e in c["records"]]
    assert [e["record"] for e in entries] == [str(n) for n in range(600)]
    assert all(len(json.dumps(e)) <= MAX_RECORD_BYTES for e in entries)
    assert entries[3]["failed"] and entries[3]["raw"].startswith("ööö") and entries[4]["fields"]["tags"] == "é" * 388
    assert reported[0]["model"] == "echo" and reported[0]["prompt_path"] == "prompts/p.txt"
    assert stage.summary()["records"] == 600 and stage.summary()["failed"] == 200
    assert list(stage.chunks()) == []  # each reported once
