"""Reports round-trip through JSON, refuse wrong versions and missing fields with a clear error,
mark variants that miss their quality target; quality, size and generation measurements
against the evaluation code of tinytorch.models and module 14."""

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tinytorch import datasets, models  # noqa: E402
from tinytorch.benchmarking import (  # noqa: E402
    SCHEMA_VERSION, BenchmarkReport, Estimate, QualityTarget, ReportError, VariantResult, measure_accuracy,
    measure_footprint, measure_generation, measure_lm_quality, notebook_settings, plot_latency_distribution,
    plot_pareto, run_stream, validate_report, wilson_interval,
)
from tinytorch.models.evaluate import accuracy, lm_loss  # noqa: E402
from tinytorch.profiling import parameter_bytes  # noqa: E402
from tinytorch.utils.system import machine_info  # noqa: E402
from tests.fakes import FakeClock  # noqa: E402


def stream_result(latency_cycle, n=60):
    clock = FakeClock()
    it = iter(np.tile(latency_cycle, n))
    return run_stream(lambda b: clock.advance(next(it)), np.arange(5.0),
                      notebook_settings("SingleStream", min_query_count=n, min_duration_s=0.0, warmup_queries=0),
                      clock=clock)


@pytest.fixture
def report():
    target = QualityTarget("accuracy", 0.98)
    rep = BenchmarkReport("unit test")
    rep.add(VariantResult("fp32", wilson_interval(353, 360), target, {"SingleStream": stream_result([0.002, 0.003])},
                          {"parameter_bytes": 4000, "disk_bytes": 4500},
                          {"server_max_qps": Estimate(100.0, 100.0, 105.0, 0.0, "search bracket")}))
    rep.add(VariantResult("int8", wilson_interval(352, 360), target, {"SingleStream": stream_result([0.004])},
                          {"parameter_bytes": 1000, "disk_bytes": 1500}))
    rep.add(VariantResult("broken", wilson_interval(300, 360), target, {"SingleStream": stream_result([0.001])},
                          {"parameter_bytes": 900}))
    return rep


def test_round_trip_through_json(report, tmp_path):
    path = report.save(tmp_path / "report.json")
    back = BenchmarkReport.load(path)
    assert back.to_dict() == report.to_dict()
    assert back.variant("fp32").figures["server_max_qps"] == report.variant("fp32").figures["server_max_qps"]
    r0, r1 = report.variant("fp32").scenarios["SingleStream"], back.variant("fp32").scenarios["SingleStream"]
    assert np.array_equal(r0.latencies, r1.latencies) and r0.value == r1.value and r0.settings == r1.settings
    saved = json.loads(path.read_text())
    assert saved["schema_version"] == SCHEMA_VERSION and saved["system"]["logical_cores"] >= 1
    assert not list(tmp_path.glob("*.tmp")), "the atomic write leaves no temporary file"


def test_infinite_settings_survive_json(report, tmp_path):
    # max_duration_s = inf (MLPerf's "no limit") is not JSON; it must come back as inf
    r = report.variant("int8").scenarios["SingleStream"]
    r.settings = r.settings.replace(max_duration_s=math.inf)
    back = BenchmarkReport.load(report.save(tmp_path / "r.json"))
    assert back.variant("int8").scenarios["SingleStream"].settings.max_duration_s == math.inf


def test_infinite_figures_survive_json(report, tmp_path):
    # find_max_qps returns failed_qps = inf when even the highest rate passed; JSON has no inf
    v = report.variant("int8")
    v.figures["server_max_qps"] = Estimate(20_000.0, 20_000.0, math.inf, 0.0, "search bracket")
    v.scenarios["SingleStream"].extra["latency_bound_s"] = math.inf
    text = report.save(tmp_path / "r.json").read_text()
    assert "Infinity" not in text, "the file must be standard JSON"
    back = BenchmarkReport.load(tmp_path / "r.json").variant("int8")
    assert back.figures["server_max_qps"].high == math.inf
    assert back.scenarios["SingleStream"].extra["latency_bound_s"] == math.inf


def test_a_variant_below_its_quality_target_is_not_valid(report):
    assert report.variant("fp32").valid and report.variant("int8").valid
    assert not report.variant("broken").meets_quality and not report.variant("broken").valid
    assert report.to_dict()["variants"][2]["valid"] is False
    assert "NO" in str(report)


def test_an_invalid_scenario_run_makes_the_variant_invalid(report):
    v = report.variant("int8")
    v.scenarios["SingleStream"].valid = False
    assert v.meets_quality and not v.valid


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda d: d.update(schema_version="1"), "schema_version '1'"),
    (lambda d: d.pop("schema_version"), "schema_version None"),
    (lambda d: d.update(schema="other"), "not a tinytorch benchmark report"),
    (lambda d: d.pop("variants"), "missing required field 'variants'"),
    (lambda d: d.pop("system"), "missing required field 'system'"),
    (lambda d: d.update(system=[]), "'system' must be dict"),
    (lambda d: d["variants"][0].pop("scenarios"), "variant 0 ('fp32') is missing required field 'scenarios'"),
    (lambda d: d["variants"][1].update(memory=3), "variant 1 ('int8') field 'memory'"),
    (lambda d: d["variants"].insert(0, "fp32"), "variant 0 must be an object, got str"),
    (lambda d: d.update(title=3), "'title' must be str"),
])
def test_bad_reports_are_clear_errors(report, tmp_path, change, words):
    d = json.loads(json.dumps(report.to_dict()))
    change(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ReportError) as err:
        BenchmarkReport.load(path)
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)


def test_not_json_and_not_an_object(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        BenchmarkReport.load(path)
    with pytest.raises(ReportError, match="JSON object"):
        validate_report([1, 2])


def test_duplicate_variant_names_are_refused(report):
    with pytest.raises(ValueError, match="already has"):
        report.add(VariantResult("fp32"))
    with pytest.raises(KeyError):
        report.variant("nope")


def test_quality_targets_both_directions():
    acc = QualityTarget("accuracy", 0.98)
    assert acc.threshold == pytest.approx(0.9702) and acc.met(0.9702) and not acc.met(0.97)
    loss = QualityTarget("perplexity", 8.0, fraction=0.999, higher_is_better=False)
    assert loss.threshold == pytest.approx(8.0 / 0.999) and loss.met(8.005) and not loss.met(8.01)
    assert VariantResult("no target").valid
    with pytest.raises(ValueError):
        QualityTarget("accuracy", -1.0)


def test_a_report_records_the_machine_it_ran_on():
    rep = BenchmarkReport("machine")
    assert set(rep.system) == set(machine_info()), "the report's system is tinytorch.utils.system.machine_info()"
    assert rep.system["logical_cores"] >= 1 and rep.system["numpy"] == np.__version__
    assert rep.system["python"].count(".") == 2 and rep.system["usable_cores"] >= 1


def test_measure_accuracy_agrees_with_the_evaluation_code():
    d = datasets.load_digits()
    m = models.load("digits_mlp")
    e = measure_accuracy(m, d.x_test, d.y_test)
    assert e.value == pytest.approx(accuracy(m, d.x_test, d.y_test)) and e.method == "wilson"
    assert e.low < e.value < e.high


def test_lm_quality_is_the_mean_of_lm_loss_over_equal_slices():
    text = datasets.load_text()
    gpt = models.load("tiny_gpt")
    ctx = gpt.config.context_length
    ids = text.tokenizer.encode(text.val[: 4 * ctx + 50])
    q = measure_lm_quality(gpt, ids, groups=4)
    assert q["tokens"] == 4 * ctx
    assert q["loss"].value == pytest.approx(lm_loss(gpt, ids[: 4 * ctx + 1])["loss"], rel=1e-5)
    assert q["perplexity"].value == pytest.approx(math.exp(q["loss"].value))
    assert q["perplexity"].low == pytest.approx(math.exp(q["loss"].low))
    with pytest.raises(ValueError, match="too few"):
        measure_lm_quality(gpt, ids[:300], groups=4)


def test_footprint_uses_real_bytes():
    from tinytorch.quantization import quantize_model

    d = datasets.load_digits()
    m = models.load("digits_mlp")
    q = quantize_model(m, d.x_train[:64])
    fp, i8 = measure_footprint(m, d.x_test[:8]), measure_footprint(q, d.x_test[:8])
    assert fp["parameter_bytes"] == parameter_bytes(m) and i8["parameter_bytes"] == parameter_bytes(q)
    assert fp["disk_bytes"] > fp["parameter_bytes"] and i8["disk_bytes"] < fp["disk_bytes"] / 2
    assert fp["peak_activation_bytes"] > 0


def test_measure_generation_separates_first_token_from_the_rest():
    clock = FakeClock()
    calls = []

    def generate(n):                      # 30 ms to the first token, then 5 ms per token
        calls.append(n)
        clock.advance(0.030 + 0.005 * (n - 1))

    g = measure_generation(generate, new_tokens=9, repeats=6, warmup=1, clock=clock)
    assert g["ttft"].value == pytest.approx(0.030) and g["tpot"].value == pytest.approx(0.005)
    assert g["total"].value == pytest.approx(0.070) and sorted(set(calls)) == [1, 9] and len(calls) == 14


def test_plots_draw_every_variant(report):
    fig, axes = plt.subplots(1, 2)
    plot_latency_distribution({v.name: v.scenarios["SingleStream"] for v in report.variants}, ax=axes[0])
    assert len(axes[0].get_lines()) >= 3
    plot_pareto(report, ax=axes[1])
    labels = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert any("broken" in s and "not valid" in s for s in labels) and any("Pareto" in s for s in labels)
    plt.close(fig)
    with pytest.raises(ValueError, match="no variant"):
        plot_pareto(BenchmarkReport("empty"))
