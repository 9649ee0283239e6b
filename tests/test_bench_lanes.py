"""The side-by-side benchmark on the tiny model: both configurations run in their own processes,
report positive throughputs, and the table gives the gain as their ratio. One kind of work only
(each configuration spawns fresh processes, a few seconds each); the real run measures both."""

import pytest

from train.cli.bench_lanes import build_parser, main, measure, table


def test_bench_lanes_times_one_process_against_two_side_by_side(tiny_dir, tmp_path):
    out = tmp_path / "BENCH.md"
    argv = ["--model", tiny_dir, "--threads", "2", "--units", "1", "--repeats", "1", "--work", "train"]
    args = build_parser().parse_args([*argv, "--out", str(out)])
    rows = measure(args)
    assert [r["work"] for r in rows] == ["train"]
    for r in rows:
        assert r["one"] > 0 and r["many"] > 0 and r["gain"] == pytest.approx(r["many"] / r["one"])
    text = table(rows, args)
    assert "| 1 process x 2 threads (per s) | 2 processes x 1 thread(s), together (per s) |" in text
    assert "| train | optimizer steps |" in text
    with pytest.raises(SystemExit, match="at least 2"):
        main([*argv, "--processes", "1", "--out", str(out)])
    assert not out.exists()  # a refused run writes nothing
