import json

import pytest

from covidct.cli import main
from covidct.data import load_splits
from covidct.models import create_model
from covidct.studies.bench import cpu_peak_flops, forward_flops, pipeline_throughput


def test_peak_and_flops_are_sane():
    peak = cpu_peak_flops()
    assert peak["cores"] >= 1 and peak["ghz"] > 0 and peak["fp32"] > 1e9 and peak["bf16"] >= peak["fp32"]
    model, _ = create_model("timm:resnet10t", pretrained=False)
    small, big = forward_flops(model, 32), forward_flops(model, 64)
    assert big == pytest.approx(4 * small, rel=0.1)  # convolution FLOPs scale with the pixel count


def test_pipeline_throughput_runs(tiny_dataset):
    samples = load_splits(tiny_dataset).splits["train"]
    import covidct.studies.bench as bench

    for cached in (True, False):
        clock = iter([100.0, 102.5])  # the loop's start and end as time.perf_counter reads them
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bench.time, "perf_counter", lambda clock=clock: next(clock))
            rate = pipeline_throughput(samples, 32, cached=cached, epochs=2)
        assert rate == pytest.approx(2 * len(samples) / 2.5), cached  # every image of every epoch, over 2.5 s


@pytest.mark.slow
def test_bench_quick_writes_table_and_json(tmp_path, capsys):
    """The benchmark runs end to end in --quick mode; nothing about speed is asserted."""
    assert main(["bench", "--quick", "--models", "timm:resnet10t", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    m = results["models"]["timm:resnet10t"]
    for key in (
        "train_naive_ips",
        "train_opt_ips",
        "eager_fp32_batch_ips",
        "ort_batch_ips",
        "ort_p95_ms",
        "forward_ms",
        "backward_ms",
        "optimizer_ms",
        "loading_ms",
    ):
        assert m[key] > 0, key
    assert results["pipeline_ips"]["decoded_once"] > 0 and results["peak_rss_mb"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| timm:resnet10t |" in table and "GFLOP/s fp32" in table
