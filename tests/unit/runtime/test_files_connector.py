"""File source (JSON lines, CSV, directories, globs, resume) and file sink, on real files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_streaming.runtime.connectors import files
from heliosdb_streaming.runtime.connectors.files import FileSinkWriter, FileSourceReader
from heliosdb_streaming.runtime.connectors.printer import PrintSinkWriter
from heliosdb_streaming.runtime.contracts import Batch, Split


async def read_all(
    reader: FileSourceReader,
    splits: list[Split],
    positions: dict[str, Any] | None = None,
    max_records: int = 1000,
) -> tuple[dict[str, Batch], dict[str, Any]]:
    await reader.open(splits, positions or {})
    out: dict[str, Batch] = {s.split_id: [] for s in splits}
    last: dict[str, Any] = {}
    finished: set[str] = set()
    for _ in range(100_000):
        if len(finished) == len(splits):
            break
        for batch in await reader.poll(max_records, 0.01):
            assert batch.split_id not in finished
            out[batch.split_id].extend(batch.records)
            last[batch.split_id] = batch.position
            if batch.finished:
                finished.add(batch.split_id)
    else:
        raise AssertionError("the reader did not finish")
    await reader.close()
    return out, last


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


async def test_json_lines_blank_lines_and_decode_errors(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text('{"a": 1}\n\n   \n{"a": 2}\r\nnot json\n[1, 2]\n{"a": 3}')  # no newline at the end
    reader = FileSourceReader(path=str(f), format="json", source_index=1)
    splits = await reader.discover_splits()
    assert [(s.split_id, s.params["file"]) for s in splits] == [("s1-f0", str(f.resolve()))]
    out, last = await read_all(reader, splits)
    assert out["s1-f0"] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert [(split, line) for split, line, _ in reader.decode_errors] == [("s1-f0", 5), ("s1-f0", 6)]
    assert "expected a JSON object, got list" in reader.decode_errors[1][2]
    assert last["s1-f0"] == {"line": 7, "offset": f.stat().st_size}


async def test_json_resume_from_position_nothing_lost_nothing_twice(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(files, "CHUNK_BYTES", 64)  # many chunks, lines across chunk borders
    f = tmp_path / "big.jsonl"
    records = [{"i": i, "pad": "x" * (i % 17)} for i in range(500)]
    write_jsonl(f, records)
    reader = FileSourceReader(path=str(f), format="json", source_index=0)
    splits = await reader.discover_splits()
    await reader.open(splits, {})
    seen: Batch = []
    position: Any = None
    while len(seen) < 123:
        for batch in await reader.poll(10, 0.01):
            seen.extend(batch.records)
            position = batch.position
    await reader.close()
    assert position == {"line": len(seen), "offset": sum(len(orjson.dumps(r)) + 1 for r in seen)}
    rest, _ = await read_all(
        FileSourceReader(path=str(f), format="json", source_index=0), splits, {"s0-f0": position}, 7
    )
    assert seen + rest["s0-f0"] == records
    # A plain line count works too (skips lines).
    by_lines, _ = await read_all(
        FileSourceReader(path=str(f), format="json", source_index=0), splits, {"s0-f0": 400}
    )
    assert by_lines["s0-f0"] == records[400:]


async def test_directory_and_glob_make_sorted_splits(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    for name, n in (("b.jsonl", 2), ("a.jsonl", 3), (".hidden", 1), ("c.txt", 1)):
        write_jsonl(d / name, [{"file": name, "i": i} for i in range(n)])
    (d / "sub").mkdir()
    write_jsonl(d / "sub" / "nested.jsonl", [{"nested": True}])

    reader = FileSourceReader(path=str(d), format="json", source_index=0)
    splits = await reader.discover_splits()
    assert [Path(s.params["file"]).name for s in splits] == ["a.jsonl", "b.jsonl", "c.txt"]
    assert [s.split_id for s in splits] == ["s0-f0", "s0-f1", "s0-f2"]
    out, _ = await read_all(reader, splits)
    assert [len(v) for v in out.values()] == [3, 2, 1]

    globbed = FileSourceReader(path=str(d / "*.jsonl"), format="json", source_index=3)
    assert [Path(s.params["file"]).name for s in await globbed.discover_splits()] == ["a.jsonl", "b.jsonl"]

    with pytest.raises(FileNotFoundError, match="no file matches"):
        await FileSourceReader(
            path=str(tmp_path / "nope*.json"), format="json", source_index=0
        ).discover_splits()
    with pytest.raises(FileNotFoundError):
        await FileSourceReader(
            path=str(tmp_path / "missing.json"), format="json", source_index=0
        ).discover_splits()


async def test_csv_header_numbers_quotes_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "in.csv"
    f.write_text(
        "\ufeffid,name,amount,zip,note\r\n"
        "1,alice,12.50,00123,plain\r\n"
        '2,"bob, jr",-3,10001,"multi\nline ""quoted"""\r\n'
        "3,carol,1e3,x,\r\n"
        "4,too,many,fields,here,extra\r\n"
        "\r\n"
        "5,dave,.5,+7,last"
    )
    reader = FileSourceReader(path=str(f), format="csv", source_index=0)
    splits = await reader.discover_splits()
    out, last = await read_all(reader, splits)
    assert out["s0-f0"] == [
        {"id": 1, "name": "alice", "amount": 12.5, "zip": "00123", "note": "plain"},
        {"id": 2, "name": "bob, jr", "amount": -3, "zip": 10001, "note": 'multi\nline "quoted"'},
        {"id": 3, "name": "carol", "amount": 1000.0, "zip": "x", "note": ""},
        {"id": 5, "name": "dave", "amount": 0.5, "zip": 7, "note": "last"},
    ]
    assert [(line, msg) for _, line, msg in reader.decode_errors] == [
        (6, "expected 5 fields (the header's), got 6")
    ]
    assert last["s0-f0"]["line"] == 8
    assert last["s0-f0"]["offset"] == f.stat().st_size


async def test_csv_resume_keeps_the_header(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(files, "CHUNK_BYTES", 50)
    f = tmp_path / "rows.csv"
    f.write_text("k,v\n" + "".join(f'{i},"val\n{i}"\n' for i in range(60)))
    reader = FileSourceReader(path=str(f), format="csv", source_index=0)
    splits = await reader.discover_splits()
    await reader.open(splits, {})
    first = await reader.poll(25, 0.01)
    await reader.close()
    got = first[0].records
    assert [r["k"] for r in got] == list(range(25))
    assert first[0].position["line"] == 1 + 25 * 2
    rest, _ = await read_all(
        FileSourceReader(path=str(f), format="csv", source_index=0), splits, {"s0-f0": first[0].position}
    )
    assert [r["k"] for r in got + rest["s0-f0"]] == list(range(60))
    assert rest["s0-f0"][0] == {"k": 25, "v": "val\n25"}


async def test_empty_files_finish_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.csv").write_text("")
    for name, fmt in (("a.jsonl", "json"), ("b.csv", "csv")):
        reader = FileSourceReader(path=str(tmp_path / name), format=fmt, source_index=0)  # type: ignore[arg-type]
        out, last = await read_all(reader, await reader.discover_splits())
        assert out == {"s0-f0": []}
        assert last["s0-f0"]["offset"] == 0


async def test_file_sink_one_file_per_task(tmp_path: Path) -> None:
    sink = FileSinkWriter(path=str(tmp_path / "out" / "result"))
    await sink.open()
    await sink.write("s0-p0", [{"a": 1}, {"b": [1, 2]}])
    await sink.write("s0-p1", [{"c": "x"}])
    await sink.write("s0-p0", [{"a": 2}])
    await sink.write("s0-p0", [])
    await sink.flush()
    assert (tmp_path / "out" / "result-s0-p0.jsonl").read_bytes() == b'{"a":1}\n{"b":[1,2]}\n{"a":2}\n'
    await sink.write("s0-p1", [{"c": "y"}])
    await sink.close()
    assert (tmp_path / "out" / "result-s0-p1.jsonl").read_text().splitlines() == ['{"c":"x"}', '{"c":"y"}']

    placeholder = FileSinkWriter(path=str(tmp_path / "task-{task}.json"))
    await placeholder.write("a/b", [{"x": 1}])
    await placeholder.close()
    assert (tmp_path / "task-a_b.json").read_text() == '{"x":1}\n'

    # The sink's output reads back through the source.
    reader = FileSourceReader(path=str(tmp_path / "out" / "result-*.jsonl"), format="json", source_index=0)
    out, _ = await read_all(reader, await reader.discover_splits())
    assert sorted(orjson.dumps(r) for v in out.values() for r in v) == sorted(
        orjson.dumps(r) for r in [{"a": 1}, {"b": [1, 2]}, {"a": 2}, {"c": "x"}, {"c": "y"}]
    )


async def test_print_sink_writes_json_lines() -> None:
    stream = io.StringIO()
    sink = PrintSinkWriter(prefix="alert> ", stream=stream)
    await sink.open()
    await sink.write("t", [{"a": 1}, {"b": "é"}])
    await sink.flush()
    await sink.close()
    assert stream.getvalue() == 'alert> {"a":1}\nalert> {"b":"é"}\n'


async def test_lag_is_the_lines_not_yet_read_and_follows_a_resume(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n{"a": 4}')  # 5 lines, the last without a newline
    reader = FileSourceReader(path=str(f))
    splits = await reader.discover_splits()
    assert reader.lag() is None  # nothing opened: nothing known
    await reader.open(splits, {})
    assert reader.lag() == 5
    [batch] = await reader.poll(2, 0.01)
    assert batch.records == [{"a": 1}] and reader.lag() == 3  # two lines read, one of them blank
    await reader.open(splits, {"s0-f0": batch.position})  # resumed where the batch ended
    assert reader.lag() == 3
    while not any(b.finished for b in await reader.poll(100, 0.01)):
        pass
    assert reader.lag() == 0
    await reader.close()
