"""Trace readers: serving traces (CSV / JSONL) become a typed table of requests.

Every reader is the generic one with a column mapping; the shipped traces have presets
(:data:`PRESETS`). A request has an arrival time, a prompt length, an output length and,
for Mooncake, the ids of its 512-token prefix blocks (equal ids = shareable prefix KV).
Traces without timestamps (length-only CSVs) get Poisson arrivals at a given rate.

Bad rows (missing or non-numeric value, length < 1, non-integer length, arrival earlier
than the row before) are refused with file, line and field named, or, with
``on_bad_row="skip"``, dropped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

ON_BAD_ROW = ("error", "skip")
ARRIVAL_UNITS = ("s", "ms", "us", "datetime")
FILE_TYPES = ("csv", "jsonl")
SHIPPED_PREFIX = "rpa_bench/data/traces"
# sha256 of the shipped (unmodified upstream) trace files, relative to SHIPPED_PREFIX.
SHIPPED_TRACE_SHA256 = {
    "azure-llm-2023/AzureLLMInferenceTrace_code.csv": "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
    "azure-llm-2023/AzureLLMInferenceTrace_conv.csv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
    "mooncake-fast25/conversation_trace.jsonl": "b8cbb061a85206d729d91cdc2981f43c9e0d99209dce588d3af5f7934408b9df",
    "mooncake-fast25/synthetic_trace.jsonl": "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131",
    "sharegpt-lengths-sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv":
        "6d6c296302a853e2669a674a96f269283e60c57e60363bd450588a1066919f9f",
    "arxiv-summarization-lengths-vidur/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv":
        "9d3580538d915ca75e4aaaa54590b42dbb17abc6d74c8913310cf07c232adcdc",
}


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    """Which column of a trace file holds each request field (None: absent)."""

    prompt_len: str
    output_len: str
    arrival: str | None = None  # None: Poisson arrivals at arrival_rate_per_s
    arrival_unit: str = "s"  # s | ms | us | datetime
    hash_ids: str | None = None  # list of prefix-block ids (JSONL only)

    def __post_init__(self) -> None:
        if self.arrival_unit not in ARRIVAL_UNITS:
            raise ValueError(f"columns.arrival_unit={self.arrival_unit!r}; allowed: {', '.join(ARRIVAL_UNITS)}")


PRESETS: dict[str, ColumnMap] = {
    "azure": ColumnMap("ContextTokens", "GeneratedTokens", "TIMESTAMP", "datetime"),
    "mooncake": ColumnMap("input_length", "output_length", "timestamp", "ms", "hash_ids"),
    "lengths": ColumnMap("num_prefill_tokens", "num_decode_tokens"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class RequestTable:
    """Requests of one trace, in arrival order."""

    arrival_s: np.ndarray  # f64[N], non-decreasing, first request at 0
    prompt_len: np.ndarray  # i64[N], >= 1
    output_len: np.ndarray  # i64[N], >= 1
    hash_offsets: np.ndarray | None = None  # i64[N+1]: request i's blocks are hash_ids[off[i]:off[i+1]]
    hash_ids: np.ndarray | None = None  # i64[total blocks]
    sources: dict = dataclasses.field(default_factory=dict)  # file -> sha256
    num_skipped_rows: int = 0

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.prompt_len) != n or len(self.output_len) != n:
            raise ValueError("arrival_s, prompt_len and output_len must have the same length")
        if (self.hash_ids is None) != (self.hash_offsets is None):
            raise ValueError("hash_ids and hash_offsets go together")
        if self.hash_offsets is not None and len(self.hash_offsets) != n + 1:
            raise ValueError(f"len(hash_offsets)={len(self.hash_offsets)} must be num_requests + 1 = {n + 1}")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def blocks(self, i: int) -> np.ndarray:
        """Prefix-block ids of request ``i`` (empty without hash ids)."""
        if self.hash_ids is None:
            return np.zeros(0, np.int64)
        return self.hash_ids[self.hash_offsets[i] : self.hash_offsets[i + 1]]

    def head(self, n: int) -> "RequestTable":
        """The first ``n`` requests."""
        offs = ids = None
        if self.hash_offsets is not None:
            offs = self.hash_offsets[: n + 1]
            ids = self.hash_ids[: offs[-1]]
        return dataclasses.replace(
            self, arrival_s=self.arrival_s[:n], prompt_len=self.prompt_len[:n],
            output_len=self.output_len[:n], hash_offsets=offs, hash_ids=ids,
        )

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({"arrival_s": self.arrival_s, "prompt_len": self.prompt_len,
                              "output_len": self.output_len})
        if self.hash_ids is not None:
            frame["hash_ids"] = [self.blocks(i).tolist() for i in range(len(self))]
        return frame


# --- files -------------------------------------------------------------------------------
def shipped_traces_dir() -> Path:
    return Path(str(resources.files("rpa_bench") / "data" / "traces"))


def resolve_trace_path(path: str) -> tuple[Path, str]:
    """(file on disk, provenance name): shipped traces are named by their in-repo path."""
    p = Path(path).expanduser()
    if p.is_file():
        return p, str(path)
    shipped = shipped_traces_dir() / path
    if shipped.is_file():
        return shipped, f"{SHIPPED_PREFIX}/{path}"
    raise ValueError(f"trace path={path!r} is neither a file nor a shipped trace under {SHIPPED_PREFIX}/")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_CSV_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _read_csv(blob: bytes, name: str, on_bad_row: str) -> tuple[pd.DataFrame, np.ndarray, list[tuple[int, str]]]:
    """pandas' CSV reader, its errors said as the trace's (file, line, what is wrong)."""
    try:
        frame = pd.read_csv(io.BytesIO(blob), skip_blank_lines=False, dtype=str, keep_default_na=False)
        return frame, np.arange(len(frame)) + 2, []
    except pd.errors.EmptyDataError:
        raise ValueError(f"{name}: empty file (no header row)") from None
    except pd.errors.ParserError as err:
        m = _CSV_FIELDS.search(str(err))
        if m is None:
            raise ValueError(f"{name}: not a readable CSV file ({str(err).splitlines()[0]})") from None
        if on_bad_row == "error":
            raise ValueError(f"{name}: line {m.group(2)}: {m.group(3)} fields, but the header has "
                             f"{m.group(1)} (on_bad_row=skip drops such rows)") from None
    # on_bad_row=skip: the python engine hands each malformed line to us, to count and drop
    broken: list[tuple[int, str]] = []
    frame = pd.read_csv(io.BytesIO(blob), skip_blank_lines=False, dtype=str, keep_default_na=False,
                        engine="python", on_bad_lines=lambda fields: broken.append((0, f"{len(fields)} fields")))
    return frame, np.arange(len(frame)) + 2, broken


def sniff_file_type(file: Path, blob: bytes) -> str:
    """``jsonl`` for ``.jsonl`` / ``.ndjson`` / ``.json`` files or content starting with ``{``, else ``csv``."""
    if file.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    head = blob[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "csv"


def _load_frame(blob: bytes, name: str, file_type: str,
                on_bad_row: str = "error") -> tuple[pd.DataFrame, np.ndarray, list[tuple[int, str]]]:
    """(rows, 1-based file line of each row, [(line, reason)] of unparsable lines)."""
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{name}: not a UTF-8 text file (byte 0x{blob[err.start]:02x} at offset {err.start}); "
                         "expected CSV or JSONL") from None
    if file_type == "csv":
        return _read_csv(blob, name, on_bad_row)
    texts = blob.decode("utf-8-sig").splitlines()
    if not any(t.strip() for t in texts):
        raise ValueError(f"{name}: empty file (no JSON lines)")
    try:  # one parse of the whole file; per line only to locate a problem
        records = json.loads("[" + ",".join(texts) + "]")
        if len(records) == len(texts) and all(type(r) is dict for r in records):
            return pd.DataFrame.from_records(records), np.arange(1, len(texts) + 1), []
    except ValueError:
        pass
    records, lines, broken = [], [], []
    for lineno, text in enumerate(texts, start=1):
        try:
            rec = json.loads(text)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            broken.append((lineno, f"not a JSON object ({e})"))
            continue
        records.append(rec)
        lines.append(lineno)
    return pd.DataFrame.from_records(records), np.asarray(lines, np.int64), broken


def _lengths(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 lengths, bad mask): missing, non-numeric, non-integer or < 1 is bad."""
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num) | (num < 1) | (num != np.floor(num))
    return np.where(bad, 1, num).astype(np.int64), bad


def _arrivals(values: pd.Series, unit: str) -> tuple[np.ndarray, np.ndarray]:
    if unit == "datetime":
        ts = pd.to_datetime(values, format="ISO8601", errors="coerce")
        bad = ts.isna().to_numpy()
        ns = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        # seconds since the first valid arrival, subtracted in integer nanoseconds: epoch
        # seconds as float64 would lose up to 4e-7 s per arrival
        base = int(ns[~bad][0]) if (~bad).any() else 0
        return np.where(bad, 0, ns - base).astype(np.float64) / 1e9, bad
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num) | (num < 0)
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]
    return np.where(bad, 0.0, num) * scale, bad


def _hash_lists(values: pd.Series) -> np.ndarray:
    """Bad mask: a value that is not a list of integers."""
    items = values.tolist()
    if all(type(v) is list for v in items) and set(map(type, itertools.chain.from_iterable(items))) <= {int}:
        return np.zeros(len(items), bool)
    ok = [isinstance(v, list) and all(type(x) is int for x in v) for v in items]
    return ~np.asarray(ok, dtype=bool)


def check_trace_settings(*, on_bad_row: str, max_requests: int | None, file_type: str | None,
                         arrival: str | None, arrival_rate_per_s: float | None, where: str = "") -> None:
    """The one check of a trace's read settings (``where``: the config section, e.g.
    ``workload.``), shared by the workload spec and :func:`read_trace`."""
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"{where}on_bad_row={on_bad_row!r}; allowed: {', '.join(ON_BAD_ROW)}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"{where}max_requests={max_requests} must be >= 1 or null")
    if file_type is not None and file_type not in FILE_TYPES:
        raise ValueError(f"{where}file_type={file_type!r}; allowed: {', '.join(FILE_TYPES)} or null")
    if arrival is None and not (arrival_rate_per_s and arrival_rate_per_s > 0):
        raise ValueError(f"{where}arrival_rate_per_s={arrival_rate_per_s!r} must be > 0: the trace has no "
                         "arrival column (timestamps)")


def read_trace(
    path: str,
    *,
    columns: ColumnMap,
    file_type: str | None = None,
    on_bad_row: str = "error",
    arrival_rate_per_s: float | None = None,
    seed: int = 0,
    max_requests: int | None = None,
) -> RequestTable:
    """Read a CSV or JSONL trace into a :class:`RequestTable` (see the module docstring)."""
    check_trace_settings(on_bad_row=on_bad_row, max_requests=max_requests, file_type=file_type,
                         arrival=columns.arrival, arrival_rate_per_s=arrival_rate_per_s)
    file, name = resolve_trace_path(path)
    blob = file.read_bytes()
    file_type = file_type or sniff_file_type(file, blob)
    sha = hashlib.sha256(blob).hexdigest()
    frame, lines, broken = _load_frame(blob, name, file_type, on_bad_row)
    if broken and on_bad_row == "error":
        raise ValueError(f"{name}: line {broken[0][0]}: {broken[0][1]}")

    wanted = {"prompt_len": columns.prompt_len, "output_len": columns.output_len,
              "arrival": columns.arrival, "hash_ids": columns.hash_ids}
    for field, col in wanted.items():
        if col is not None and col not in frame.columns:
            raise ValueError(f"{name}: missing column {col!r} (columns.{field}); columns present: {list(frame.columns)}")

    problems: list[tuple[str, str, np.ndarray]] = []  # (field, column, bad mask)
    prompt, bad = _lengths(frame[columns.prompt_len])
    problems.append(("prompt_len", columns.prompt_len, bad))
    output, bad = _lengths(frame[columns.output_len])
    problems.append(("output_len", columns.output_len, bad))
    if columns.arrival is not None:
        arrival, bad = _arrivals(frame[columns.arrival], columns.arrival_unit)
        problems.append(("arrival", columns.arrival, bad))
    if columns.hash_ids is not None:
        problems.append(("hash_ids", columns.hash_ids, _hash_lists(frame[columns.hash_ids])))
    bad_any = np.zeros(len(frame), bool)
    for _, _, bad in problems:
        bad_any |= bad
    if columns.arrival is not None:
        earlier = np.maximum.accumulate(np.where(bad_any, -np.inf, arrival))
        prev = np.concatenate([[-np.inf], earlier[:-1]])
        backwards = ~bad_any & (arrival < prev)
        problems.append(("arrival", f"{columns.arrival} (earlier than a previous row)", backwards))
        bad_any |= backwards

    if bad_any.any() and on_bad_row == "error":
        first = int(np.argmax(bad_any))
        for field, col, bad in problems:
            if bad[first]:
                value = frame[columns.arrival if field == "arrival" else col].iloc[first]
                if isinstance(value, np.generic):
                    value = value.item()  # -5, not np.int64(-5)
                raise ValueError(f"{name}: line {lines[first]}: field {col!r} ({field}) has bad value {value!r}")
    keep = ~bad_any
    if max_requests is not None:
        keep &= np.cumsum(keep) <= max_requests
    n = int(keep.sum())
    if n == 0:
        raise ValueError(f"{name}: no usable rows")
    if columns.arrival is not None:
        arrival_s = arrival[keep] - arrival[keep][0]
    else:
        gaps = np.random.default_rng(seed).exponential(1.0 / arrival_rate_per_s, size=n)
        arrival_s = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    offs = ids = None
    if columns.hash_ids is not None:
        lists = frame[columns.hash_ids][keep].tolist()
        offs = np.concatenate([[0], np.cumsum(np.fromiter(map(len, lists), np.int64, count=len(lists)))])
        ids = np.fromiter(itertools.chain.from_iterable(lists), np.int64, count=int(offs[-1]))
    skipped = int(bad_any.sum()) + len(broken)
    return RequestTable(arrival_s.astype(np.float64), prompt[keep], output[keep], offs, ids, {name: sha}, skipped)
