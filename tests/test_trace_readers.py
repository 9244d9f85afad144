"""Trace readers: every shipped trace, generic column maps, and bad rows."""

import json

import numpy as np
import pytest

from rpa_bench.workloads.traces import PRESETS, SHIPPED_PREFIX, SHIPPED_TRACE_SHA256, ColumnMap, read_trace

SHIPPED = {
    "azure-llm-2023/AzureLLMInferenceTrace_code.csv": ("azure", 8819),
    "azure-llm-2023/AzureLLMInferenceTrace_conv.csv": ("azure", 19366),
    "mooncake-fast25/conversation_trace.jsonl": ("mooncake", 12031),
    "mooncake-fast25/synthetic_trace.jsonl": ("mooncake", 3993),
    "sharegpt-lengths-sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv": ("lengths", 30731),
    "arxiv-summarization-lengths-vidur/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv": ("lengths", 28257),
}


@pytest.mark.parametrize("path", sorted(SHIPPED))
def test_every_shipped_trace_reads_whole_with_provenance(path):
    preset, rows = SHIPPED[path]
    t = read_trace(path, columns=PRESETS[preset], arrival_rate_per_s=4.0, seed=1)
    assert len(t) == rows and t.num_skipped_rows == 0
    assert t.sources == {f"{SHIPPED_PREFIX}/{path}": SHIPPED_TRACE_SHA256[path]}
    assert t.arrival_s[0] == 0.0 and np.all(np.diff(t.arrival_s) >= 0)
    assert t.prompt_len.min() >= 1 and t.output_len.min() >= 1
    if preset == "mooncake":  # 512-token prefix blocks: one id per started block
        per_request = np.diff(t.hash_offsets)
        assert np.array_equal(per_request, -(-t.prompt_len // 512))
    else:
        assert t.hash_ids is None


def test_azure_timestamps_become_seconds_from_the_first_request():
    t = read_trace("azure-llm-2023/AzureLLMInferenceTrace_conv.csv", columns=PRESETS["azure"], max_requests=2)
    # 18:15:46.6805900 -> 18:15:50.9951690
    assert t.arrival_s[1] == pytest.approx(4.314579, abs=1e-6)
    assert t.prompt_len.tolist() == [374, 396] and t.output_len.tolist() == [44, 109]


def test_length_traces_get_seeded_poisson_arrivals():
    path = "sharegpt-lengths-sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
    a = read_trace(path, columns=PRESETS["lengths"], arrival_rate_per_s=10.0, seed=7)
    b = read_trace(path, columns=PRESETS["lengths"], arrival_rate_per_s=10.0, seed=7)
    c = read_trace(path, columns=PRESETS["lengths"], arrival_rate_per_s=10.0, seed=8)
    assert np.array_equal(a.arrival_s, b.arrival_s) and not np.array_equal(a.arrival_s, c.arrival_s)
    assert np.mean(np.diff(a.arrival_s)) == pytest.approx(0.1, rel=0.05)


def test_generic_jsonl_with_column_map_and_millisecond_clock(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"t": t, "in": i, "out": o}) for t, i, o in [(1000, 5, 2), (1500, 7, 1)]))
    t = read_trace(str(f), columns=ColumnMap("in", "out", "t", "ms"))
    assert t.arrival_s.tolist() == [0.0, 0.5] and t.prompt_len.tolist() == [5, 7]
    assert list(t.sources) == [str(f)]


CSV_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
GOOD = ["2023-11-16 18:00:00.0,10,3", "2023-11-16 18:00:01.0,20,4"]


@pytest.mark.parametrize(
    "bad_row,field",
    [("2023-11-16 18:00:02.0,-5,3", "ContextTokens"),
     ("2023-11-16 18:00:02.0,abc,3", "ContextTokens"),
     ("2023-11-16 18:00:02.0,12.5,3", "ContextTokens"),
     ("2023-11-16 18:00:02.0,12,", "GeneratedTokens"),
     ("yesterday,12,3", "TIMESTAMP"),
     ("2023-11-16 17:00:00.0,12,3", "earlier than a previous row")],
)
def test_bad_csv_row_is_refused_with_file_line_and_field_or_skipped(tmp_path, bad_row, field):
    f = tmp_path / "trace.csv"
    f.write_text(CSV_HEADER + "\n".join([GOOD[0], bad_row, GOOD[1]]) + "\n")
    with pytest.raises(ValueError, match=rf"trace.csv: line 3: field .*{field}"):
        read_trace(str(f), columns=PRESETS["azure"])
    t = read_trace(str(f), columns=PRESETS["azure"], on_bad_row="skip")
    assert len(t) == 2 and t.num_skipped_rows == 1 and t.prompt_len.tolist() == [10, 20]


def test_bad_jsonl_lines_are_named(tmp_path):
    f = tmp_path / "m.jsonl"
    rows = ['{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}',
            '{"timestamp": 3, "input_length": 5, "output_length": 1, "hash_ids": [0]',
            '{"timestamp": 4, "input_length": 5, "hash_ids": [1]}']
    f.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="m.jsonl: line 2: not a JSON object"):
        read_trace(str(f), columns=PRESETS["mooncake"])
    f.write_text("\n".join([rows[0], rows[2]]) + "\n")
    with pytest.raises(ValueError, match="line 2: field 'output_length'"):
        read_trace(str(f), columns=PRESETS["mooncake"])
    t = read_trace(str(f), columns=PRESETS["mooncake"], on_bad_row="skip")
    assert len(t) == 1 and t.num_skipped_rows == 1


def test_missing_column_is_refused_naming_it(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:00:00.0,10\n")
    with pytest.raises(ValueError, match="missing column 'GeneratedTokens'"):
        read_trace(str(f), columns=PRESETS["azure"])


def test_bad_reader_settings_name_the_field():
    with pytest.raises(ValueError, match="on_bad_row='ignore'; allowed: error, skip"):
        read_trace("x.csv", columns=PRESETS["azure"], on_bad_row="ignore")
    with pytest.raises(ValueError, match="arrival_rate_per_s"):
        read_trace("x.csv", columns=PRESETS["lengths"])
    with pytest.raises(ValueError, match="neither a file nor a shipped trace"):
        read_trace("no/such/file.csv", columns=PRESETS["azure"])
    with pytest.raises(ValueError, match="arrival_unit"):
        ColumnMap("a", "b", "c", "hours")
