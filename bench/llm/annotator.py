"""bench/llm/annotator: records/s of the openai annotator's ``annotate_records`` against a local
chat-completions server (a process of its own) that answers every request after a fixed delay (a stand-in for a
model's latency), with 8 requests in flight against 1 (the anchor).

    python bench/llm/annotator.py                       # 400 records, 1 a request, 20 ms, 5 rounds
    python bench/llm/annotator.py --batch-size 10 --delay 0.05

Rounds are interleaved (1, 8, 1, 8, ...) and each variant's median is reported, with its ratio
to the anchor and the ceiling the delay allows (in flight x batch size / delay).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve(delay: float, port: Any) -> None:
    """The server, in a process of its own (its threads would otherwise share the annotator's GIL)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            records = json.loads(body["messages"][-1]["content"].split("Records:\n", 1)[1])
            content = json.dumps({"results": [{"id": r["id"], "summary": "ok", "sensitivity": "low"} for r in records]})
            time.sleep(delay)
            data = json.dumps(
                {
                    "id": "bench",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port.put(server.server_address[1])
    server.serve_forever()


def one_round(url: str, in_flight: int, records: list[dict[str, Any]], batch_size: int) -> float:
    from runink.plugins.llm.openai_annotator import OpenAIAnnotator

    annotator = OpenAIAnnotator(base_url=url, api_key="bench", max_in_flight=in_flight, batch_size=batch_size)
    annotator.annotate_records(records[: in_flight * batch_size], ["summary"], "warm up")  # connections open
    started = time.perf_counter()
    results = annotator.annotate_records(records, ["summary", "sensitivity"], "Summarise each order.")
    elapsed = time.perf_counter() - started
    annotator.close()
    if any(r.failed for r in results) or len(results) != len(records):
        raise SystemExit(f"in flight {in_flight}: {sum(r.failed for r in results)} failed results")
    return len(records) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.02, help="the server's answer delay, seconds")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port: Any = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(args.delay, port), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port.get(timeout=30)}/v1"
    records = [{"order_id": f"O-{i:06d}", "amount": i * 1.5, "country": "DE"} for i in range(args.records)]
    variants = (1, 8)
    rates: dict[int, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for in_flight in variants:
            rates[in_flight].append(one_round(url, in_flight, records, args.batch_size))
    server.terminate()
    server.join(10)
    anchor = statistics.median(rates[1])
    print(
        f"{args.records} records, {args.batch_size} a request, server delay {args.delay * 1000:g} ms, "
        f"{args.rounds} interleaved rounds (medians)\n"
    )
    print(
        "| requests in flight | records/s (median) | min-max | vs 1 in flight | ceiling (in flight x batch / delay) |"
    )
    print("|---|---|---|---|---|")
    for in_flight in variants:
        median = statistics.median(rates[in_flight])
        ceiling = in_flight * args.batch_size / args.delay
        print(
            f"| {in_flight} | {median:,.0f} | {min(rates[in_flight]):,.0f}-{max(rates[in_flight]):,.0f} "
            f"| {median / anchor:.2f}x | {ceiling:,.0f} |"
        )


if __name__ == "__main__":
    main()
