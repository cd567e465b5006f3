"""Reads a W&B offline run file (`run-<id>.wandb`) back without a server.

The file is a 7-byte header then LevelDB's log format (32 KiB blocks of chunks with
a 7-byte header: crc32, length, type); each record is a protobuf `Record`.
"""

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from wandb.proto import wandb_internal_pb2

BLOCK_SIZE = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class OfflineRun(NamedTuple):
    run_id: str
    group: str
    job_type: str
    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    exit_code: int | None


def _records(data: bytes):
    assert data[:4] == b":W&B", "not a W&B run file"
    offset, pending = 7, b""
    while offset + 7 <= len(data):
        block_left = BLOCK_SIZE - offset % BLOCK_SIZE
        if block_left < 7:
            offset += block_left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        payload = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if length == 0 and kind == 0:
            break
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) == checksum, "bad crc"
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        out[key] = json.loads(item.value_json)
    return out


def read_run(path: str | Path, timeout: float = 20.0) -> OfflineRun:
    """Parses one `run-*.wandb` file, once W&B has finished writing it.

    `run.finish()` can return while W&B's service is still flushing the file, so a
    file whose tail is torn (bad checksum) or that has no exit record yet is read
    again, until `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = _parse(path)
            if run.exit_code is not None or time.monotonic() > deadline:
                return run
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _parse(path: str | Path) -> OfflineRun:
    run_info, config, history, summary, exit_code = None, {}, [], {}, None
    for record in _records(Path(path).read_bytes()):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_info = record.run
            config.update(_items(record.run.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert run_info is not None, f"no run record in {path}"
    config = {
        k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()
    }
    return OfflineRun(
        run_id=run_info.run_id,
        group=run_info.run_group,
        job_type=run_info.job_type,
        name=run_info.display_name,
        config=config,
        history=history,
        summary=summary,
        exit_code=exit_code,
    )


def find_runs(root: str | Path) -> list[Path]:
    """Every offline run file below `root`."""
    return sorted(Path(root).rglob("offline-run-*/run-*.wandb"))
