"""Streamed CSV and JSONL exports: hostile text survives, formulas are neutralised, every
chunk encodes as UTF-8, and a large export is pulled one chunk at a time."""

from __future__ import annotations

import csv
import io
import json

from backstop.export import CSV_COLUMNS, FORMULA_START, csv_chunks, iso_time, jsonl_chunks

HOSTILE = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tcmd", "\rcmd",
           'say "hi", then\r\nleave', "a,b", "line\nbreak", "bad \udcff byte", "\udcff=x",
           "=\udcff", "café ☕", "nul\x00in", " =leading space", "'already quoted",
           "sep\u2028arator\x85"]


def replaced(text: str) -> str:
    return text.replace("\udcff", "\ufffd")


def neutral(text: str) -> str:
    text = replaced(text)
    return "'" + text if text.startswith(FORMULA_START) else text


def hostile_record(i: int, text: str) -> dict:
    payload = {"note": text, "n": i} if i % 2 else json.dumps({"note": text, "n": i})
    return {"id": f"dlq-{i}", "queue": text, "original_job_id": f"job-{i}", "job": text,
            "error_message": text, "first_failed_at": 1_700_000_000.5 + i,
            "last_failed_at": str(1_700_000_100 + i), "replay_count": i % 6,
            "payload": payload}


def hostile_records() -> list[dict]:
    return [hostile_record(i, text) for i, text in enumerate(HOSTILE)]


def parse_csv(text: str) -> list[list[str]]:
    data = text.encode("utf-8")  # must not raise
    assert data.startswith(b"\xef\xbb\xbf")
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def test_hostile_csv_parses_back_into_header_and_one_row_per_record():
    rows = parse_csv("".join(csv_chunks(hostile_records())))
    assert rows[0] == CSV_COLUMNS
    assert len(rows) == len(HOSTILE) + 1
    assert all(len(row) == len(CSV_COLUMNS) for row in rows)


def test_no_csv_cell_starts_with_a_formula_character_and_the_text_survives():
    rows = parse_csv("".join(csv_chunks(hostile_records())))
    for text, row in zip(HOSTILE, rows[1:], strict=True):
        cells = dict(zip(CSV_COLUMNS, row, strict=True))
        assert not any(cell.startswith(FORMULA_START) for cell in row), row
        for column in ("original_queue", "job_name", "error_message"):
            assert cells[column] == neutral(text)
        assert json.loads(cells["payload"])["note"] == replaced(text)


def test_formula_cells_start_with_a_quote():
    rows = parse_csv("".join(csv_chunks(hostile_records())))
    messages = [dict(zip(CSV_COLUMNS, row, strict=True))["error_message"] for row in rows[1:]]
    assert messages[:6] == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2", "'@SUM(A1)",
                            "'\tcmd", "'\rcmd"]
    assert messages[HOSTILE.index("=\udcff")] == "'=\ufffd"
    assert messages[HOSTILE.index("'already quoted")] == "'already quoted"


def test_payload_cells_are_checked_after_json_encoding():
    records = [{"id": "a", "payload": "-2"}, {"id": "b", "payload": '"=1+1"'},
               {"id": "c", "payload": "=not json"}, {"id": "d", "payload": {"x": "=1"}}]
    rows = parse_csv("".join(csv_chunks(records)))
    payloads = [row[CSV_COLUMNS.index("payload")] for row in rows[1:]]
    assert payloads == ["'-2", '"=1+1"', '"=not json"', '{"x":"=1"}']


def test_times_are_iso_utc_and_other_fields_map_to_their_columns():
    rows = parse_csv("".join(csv_chunks([hostile_record(1, "plain")])))
    cells = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    assert cells["job_id"] == "dlq-1" and cells["original_job_id"] == "job-1"
    assert cells["first_failed_at"] == "2023-11-14T22:13:21.500Z"
    assert cells["last_failed_at"] == "2023-11-14T22:15:01.000Z"
    assert cells["replay_count"] == "1"
    assert json.loads(cells["payload"]) == {"note": "plain", "n": 1}
    assert iso_time("2024-01-01T00:00:00Z") == "2024-01-01T00:00:00Z"
    assert iso_time(None) == iso_time("") == ""


def test_csv_rows_end_with_crlf_and_an_empty_export_is_just_the_header():
    assert list(csv_chunks([])) == ["\ufeff" + ",".join(CSV_COLUMNS) + "\r\n"]


def test_jsonl_lines_each_parse_with_the_same_fields():
    text = "".join(jsonl_chunks(hostile_records()))
    text.encode("utf-8")  # must not raise
    lines = text.splitlines()  # splits on U+2028 and U+0085 too: they must be escaped
    assert len(lines) == len(HOSTILE) and text.endswith("\n")
    for i, (source, line) in enumerate(zip(HOSTILE, lines, strict=True)):
        row = json.loads(line)
        assert list(row) == CSV_COLUMNS
        assert row["error_message"] == row["job_name"] == replaced(source)
        assert row["payload"] == {"note": replaced(source), "n": i}
        assert row["replay_count"] == i % 6
    assert "café ☕" in text  # non-ASCII written as is, not \u-escaped


class Source:
    """A generator of records that counts how many have been pulled."""

    def __init__(self, total: int):
        self.total = total
        self.pulled = 0

    def __iter__(self):
        for i in range(self.total):
            self.pulled += 1
            yield {"id": f"dlq-{i}", "queue": "email", "job": "email.send",
                   "error_message": f"failure {i}", "payload": {"i": i}}


def test_csv_of_ten_thousand_records_is_pulled_chunk_by_chunk():
    source = Source(10_000)
    chunks = csv_chunks(source)
    header = next(chunks)
    assert source.pulled == 0 and header.startswith("\ufeffjob_id,")
    rows = 0
    for number, chunk in enumerate(chunks, start=1):
        assert source.pulled == number * 200  # this chunk's rows, and not one more
        rows += chunk.count("\r\n")
    assert (source.pulled, rows) == (10_000, 10_000)


def test_jsonl_of_ten_thousand_records_is_pulled_chunk_by_chunk():
    source = Source(10_000)
    lines = 0
    for number, chunk in enumerate(jsonl_chunks(source), start=1):
        assert source.pulled == number * 200
        lines += len([json.loads(line) for line in chunk.splitlines()])
    assert lines == 10_000
