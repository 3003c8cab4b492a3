"""Memory (tracemalloc/psutil) and the roofline: known allocations, pure-function labels, errors."""

import tracemalloc

import numpy as np
import pytest

import tinytorch.core as tc
from tinytorch.profiling import count_flops, measure_machine, measure_memory, parameter_bytes, roofline


def test_temporary_allocation_shows_in_peak_not_retained():
    report = measure_memory(lambda: float(np.ones(2_000_000).sum()))   # a 16 MB temporary
    assert report.peak_bytes >= 16_000_000
    assert report.retained_bytes < 1_000_000
    assert report.parameter_bytes == 0 and report.output_bytes == 0


def test_model_weights_and_activations_are_separate():
    model = tc.Sequential(tc.Linear(200, 500), tc.ReLU(), tc.Linear(500, 10))
    x = np.ones((64, 200), np.float32)
    report = measure_memory(model, x)
    assert report.parameter_bytes == parameter_bytes(model) == (200 * 500 + 500 + 500 * 10 + 10) * 4
    assert report.output_bytes == 64 * 10 * 4
    assert report.peak_bytes >= 64 * 500 * 4, "the (64, 500) hidden activation must appear in the peak"
    assert report.peak_bytes < report.parameter_bytes, "weights allocated before the call are not in the peak"
    assert isinstance(report.rss_delta_bytes, int)


def test_grad_mode_retains_the_graph():
    model = tc.Sequential(tc.Linear(100, 400), tc.ReLU(), tc.Linear(400, 1))
    x = np.ones((128, 100), np.float32)
    inference = measure_memory(model, x)
    training = measure_memory(model, x, grad=True)
    assert training.retained_bytes >= inference.retained_bytes + 128 * 400 * 4, \
        "with grad=True the activations stay alive for backward"


def test_peak_is_measured_from_the_call_not_from_an_earlier_peak():
    tracemalloc.start()
    try:
        big = np.ones(5_000_000)      # 40 MB peak in the outer session, freed before the call
        del big
        report = measure_memory(lambda: float(np.ones(1000).sum()))
        assert report.peak_bytes < 1_000_000, "an earlier peak of the caller's session is not the call's"
    finally:
        tracemalloc.stop()


def test_outer_tracemalloc_session_survives():
    tracemalloc.start()
    try:
        measure_memory(lambda: np.zeros(1000))
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()
    measure_memory(lambda: np.zeros(1000))
    assert not tracemalloc.is_tracing()


def test_memory_rejects_non_callables():
    with pytest.raises(TypeError, match="int"):
        measure_memory(7)


def linear_relu_report():
    return count_flops(tc.Sequential(tc.Linear(64, 64), tc.ReLU(), tc.Flatten()), np.ones((32, 64), np.float32))


def test_roofline_intensity_bounds_and_attainable():
    report = linear_relu_report()
    lin_flops = 2 * 32 * 64 * 64 + 32 * 64
    lin_bytes = 4 * (32 * 64 + 64 * 64 + 64 + 32 * 64)
    pts = roofline(report, peak_flops=100e9, bandwidth=10e9)      # ridge 10 FLOP/B
    assert [p.name for p in pts] == ["0", "1"], "rows without FLOPs are not on the roofline"
    lin, relu = pts
    assert (lin.flops, lin.bytes) == (lin_flops, lin_bytes)
    assert lin.intensity == pytest.approx(lin_flops / lin_bytes) and lin.intensity == pytest.approx(8.0)
    assert lin.bound == "memory" and lin.attainable_flops == pytest.approx(8.0 * 10e9)
    assert relu.intensity == pytest.approx(32 * 64 / (2 * 32 * 64 * 4)) and relu.bound == "memory"
    pts = roofline(report, peak_flops=40e9, bandwidth=10e9)       # ridge 4 FLOP/B
    assert pts[0].bound == "compute" and pts[0].attainable_flops == pytest.approx(40e9)
    assert pts[1].bound == "memory"


def test_roofline_ridge_point_is_compute_bound():
    report = linear_relu_report()
    lin = roofline(report, 1e9, 1e9)[0]
    at_ridge = roofline(report, lin.intensity * 1e9, 1e9)[0]
    assert at_ridge.bound == "compute"


@pytest.mark.parametrize("peak, bw", [(0, 1e9), (1e9, 0), (-1.0, 1e9), (float("inf"), 1e9), (1e9, float("nan"))])
def test_roofline_rejects_bad_peaks(peak, bw):
    with pytest.raises(ValueError):
        roofline(linear_relu_report(), peak, bw)


def test_roofline_needs_a_flop_report():
    with pytest.raises(TypeError):
        roofline([1, 2], 1e9, 1e9)


def test_measure_machine_is_plausible_and_validates():
    peaks = measure_machine(matmul_size=128, copy_megabytes=4, repeats=2)
    assert 1e6 < peaks.peak_flops < 1e14 and 1e6 < peaks.bandwidth < 1e13
    assert peaks.ridge == pytest.approx(peaks.peak_flops / peaks.bandwidth)
    for kwargs in ({"matmul_size": 0}, {"copy_megabytes": 0}, {"repeats": 0}):
        with pytest.raises(ValueError):
            measure_machine(**kwargs)
