"""The generation benchmark on the tiny model: every method is timed or says why it could not run,
the limit is measured in the same rounds, greedy output is compared with HFGenerator's, and the
table is appended where asked."""

from anchor.cli.bench_generate import Bench, build_parser, measure, table


def test_bench_generate_times_each_method_beside_the_limit(tiny_dir, tmp_path):
    out = tmp_path / "BENCH.md"
    args = build_parser().parse_args(
        ["--model", tiny_dir, "--n", "3", "--max-new-tokens", "4", "--repeats", "2", "--out", str(out)]
        + ["--methods", "hf", "hf-static", "vllm"]  # continuous batching takes ~20 s a call on CPU
    )
    bench = Bench(args)
    measured = measure(bench, args.methods, args.repeats, log=lambda _: None)
    results = measured["results"]
    assert {"hf", "limit"} <= set(results)
    assert set(results) - {"limit"} | set(measured["unavailable"]) == set(args.methods)
    assert measured["unavailable"]["vllm"]  # not installed here, or no CUDA: said, not skipped silently
    for r in results.values():
        assert len(r["seconds"]) == 2 and r["tokens_per_s"] > 0
    assert results["limit"]["tokens"] == 3 * 4 and 0 < results["hf"]["tokens"] <= 3 * 4
    assert results["hf"]["greedy_identical"]
    text = table(bench, measured, args)
    assert "| limit: bare decode steps |" in text and "| vllm | not run:" in text
    for name in results:
        if name != "limit":
            assert f"| {name} |" in text
