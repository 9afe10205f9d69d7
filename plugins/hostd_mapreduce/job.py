"""A map-only Hadoop Streaming job: each mapper loads the model once and scores its lines in chunks.

The mapper reads JSON lines on stdin and writes a line per row on stdout (a prediction as the local
engine writes it, or the failed row), counting both in Hadoop counters, so it runs under mrjob
(`hostd batch --engine mapreduce`, runners inline/local/hadoop/emr/dataproc) or under plain Hadoop
Streaming:

    hadoop jar hadoop-streaming.jar -files host.yaml -input in.jsonl -output out -numReduceTasks 0 \\
        -mapper "python -m hostd_mapreduce.job --step-num=0 --mapper --hostd-config host.yaml --hostd-model iris_model"

Input lines are hostd's numbered records ({"row", "id", "data"}) or plain JSON objects (then the
result has no row number; an "id" key is carried through). Absolute imports only: mrjob's local
runner runs this file as a script.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from mrjob.job import MRJob
from mrjob.protocol import RawValueProtocol

from hostd import recordfiles
from hostd.errors import InvalidInput
from hostd.offline import Scorer
from hostd.partitions import error_row, prediction_row

NAMESPACE = "hostd"  # the Hadoop counters' group: rows, failed


class HostdScoringJob(MRJob):  # type: ignore[misc]
    INPUT_PROTOCOL = RawValueProtocol  # the mapper gets each line as it is
    OUTPUT_PROTOCOL = RawValueProtocol  # and writes result lines without a key

    def configure_args(self) -> None:
        super().configure_args()
        self.add_passthru_arg("--hostd-config", required=True, help="hostd config (host.yaml)")
        self.add_passthru_arg("--hostd-model", required=True, help="model name")
        self.add_passthru_arg("--hostd-version", default=None, help="model version (default: latest)")
        self.add_passthru_arg("--hostd-chunk-size", type=int, default=1024, help="rows per predict_batch")

    def mapper_init(self) -> None:
        self.scorer = Scorer.load(self.options.hostd_config, self.options.hostd_model, self.options.hostd_version)
        self.pending: list[dict[str, Any]] = []

    def mapper(self, _: None, line: str) -> Iterator[tuple[None, str]]:
        self.pending.append(parse(line))
        if len(self.pending) >= self.options.hostd_chunk_size:
            yield from self.flush()

    def mapper_final(self) -> Iterator[tuple[None, str]]:
        yield from self.flush()

    def flush(self) -> Iterator[tuple[None, str]]:
        results = self.scorer.score(self.pending)
        failed = sum("error" in result for result in results)
        self.increment_counter(NAMESPACE, "rows", len(results))
        self.increment_counter(NAMESPACE, "failed", failed)
        for result in results:
            row = error_row(result) if "error" in result else prediction_row(result, nested=True)
            yield None, orjson.dumps(row).decode()
        self.pending = []


def parse(line: str) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return recordfiles.failure(None, InvalidInput(f"line is not valid JSON: {exc}"))  # type: ignore[arg-type]
    if isinstance(value, dict) and "row" in value and ("data" in value or "error" in value):
        return value  # a numbered record written by `hostd batch`
    return recordfiles.record(None, value)  # type: ignore[arg-type]


if __name__ == "__main__":
    HostdScoringJob.run()
