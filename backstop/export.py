"""Dead-letter records as streamed CSV and JSONL (SPEC section 4), as pure generators.

Both take any iterable of record dicts (id, queue, original_job_id, job, error_message,
first_failed_at, last_failed_at, replay_count, payload) and pull it one record at a time,
so an export of 100,000 records holds one chunk of rows, never all of them. The caller
fetches the records and sends the chunks (e.g. a streamed Flask response).

Decisions:
- The CSV starts with a UTF-8 byte order mark: without it Excel reads the file as the
  local ANSI code page and garbles every non-ASCII character. Send it as
  ``text/csv; charset=utf-8``; Python readers should open it with encoding "utf-8-sig".
- CSV cells a spreadsheet would run as a formula (starting with = + - @ tab or carriage
  return, per OWASP's CSV injection guidance) get a leading single quote. The check runs
  on the exact text written, after JSON encoding and time formatting.
- Lone surrogates (what invalid UTF-8 becomes when decoded with surrogateescape) are
  replaced with U+FFFD, so every chunk encodes as UTF-8.
- Times are ISO-8601 UTC with milliseconds ("2024-05-01T12:00:00.000Z"); a time that is
  not a number is passed through as text.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

CSV_COLUMNS = ["job_id", "original_queue", "original_job_id", "job_name", "error_message",
               "first_failed_at", "last_failed_at", "replay_count", "payload"]
CHUNK_ROWS = 200
BOM = "\ufeff"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Valid inside JSON strings, but str.splitlines() and some JSONL readers end a line there.
LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def csv_chunks(records: Iterable[dict], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[str]:
    """Yield a CSV export of records: BOM and header first, then chunk_rows rows per chunk.

    records: record dicts, pulled lazily; chunk_rows: rows per chunk after the header.
    Rows end with \\r\\n; cells are quoted only when they need it. Never raises on the
    records' text; raises whatever iterating records raises.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield BOM + _drain(buffer)
    for count, record in enumerate(records, start=1):
        writer.writerow(_csv_row(record))
        if count % chunk_rows == 0:
            yield _drain(buffer)
    tail = _drain(buffer)
    if tail:
        yield tail


def jsonl_chunks(records: Iterable[dict], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[str]:
    """Yield a JSON Lines export of records, chunk_rows lines per chunk.

    Each line is one object with the CSV's fields (payload as an object when it is JSON)
    and ends with \\n; non-ASCII text is kept as is, except U+0085, U+2028 and U+2029,
    which are escaped so no line reader splits a record; lone surrogates are replaced.
    records: record dicts, pulled lazily. Raises whatever iterating records raises.
    """
    lines: list[str] = []
    for record in records:
        line = json.dumps(export_row(record), ensure_ascii=False, separators=(",", ":"),
                          default=str)
        lines.append(_safe(line).translate(LINE_BREAKS) + "\n")
        if len(lines) == chunk_rows:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def export_row(record: dict) -> dict:
    """One record as the export's fields, in CSV_COLUMNS order: times as ISO-8601 UTC,
    replay_count as a number, payload as data (a JSON string parsed)."""
    return {
        "job_id": record.get("id", ""),
        "original_queue": record.get("queue", ""),
        "original_job_id": record.get("original_job_id", ""),
        "job_name": record.get("job", ""),
        "error_message": record.get("error_message", ""),
        "first_failed_at": iso_time(record.get("first_failed_at")),
        "last_failed_at": iso_time(record.get("last_failed_at")),
        "replay_count": _count(record.get("replay_count")),
        "payload": _payload_value(record.get("payload")),
    }


def iso_time(value) -> str:
    """A unix time (number or numeric text) as ISO-8601 UTC; other text unchanged; "" for
    None."""
    if value is None or value == "":
        return ""
    try:
        moment = datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _csv_row(record: dict) -> list[str]:
    row = export_row(record)
    row["payload"] = json.dumps(row["payload"], ensure_ascii=False, separators=(",", ":"),
                                default=str)
    return [_cell(value) for value in row.values()]


def _cell(value) -> str:
    text = _safe("" if value is None else str(value))
    # A leading quote makes spreadsheets show the cell as text instead of evaluating it.
    return "'" + text if text.startswith(FORMULA_START) else text


def _safe(text: str) -> str:
    return LONE_SURROGATE.sub("\ufffd", text)


def _payload_value(payload):
    """The payload as data: a JSON string parsed, anything else (a dict) unchanged."""
    if not isinstance(payload, str):
        return payload
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def _count(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate(0)
    return text
