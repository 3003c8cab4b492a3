"""tinytorch.utils.testing: the clock and work doubles that graded cells and tests time code with."""

import pytest

import tinytorch.core as tc
from tinytorch.utils.testing import FakeClock, FakeLayer, FakeWork
from tests.fakes import FakeClock as ReExported


def test_the_clock_moves_only_when_told_and_counts_reads_and_sleeps():
    clock = FakeClock(5.0)
    assert (clock(), clock(), clock.reads) == (5.0, 5.0, 2)
    clock.advance(1.5)
    clock.sleep(0.25)
    assert clock() == 6.75 and clock.slept == [0.25] and clock.reads == 3


def test_a_ticking_clock_advances_before_each_read():
    clock = FakeClock(tick=1.0)
    assert [clock() for _ in range(3)] == [1.0, 2.0, 3.0]
    clock.advance(10.0)
    assert clock() == 14.0


def test_work_takes_its_costs_in_order_and_records_its_arguments():
    clock = FakeClock()
    work = FakeWork(clock, [100.0, 2.0])
    assert work(7, scale=2) == 7 and clock() == 100.0
    assert work() is None and clock() == 102.0
    assert work.calls == [((7,), {"scale": 2}), ((), {})]
    with pytest.raises(AssertionError, match="3 times, but only 2 costs"):
        work()
    assert clock() == 102.0 and len(work.calls) == 2, "a refused call neither moves the clock nor counts"


def test_tests_fakes_reexports_the_same_class():
    assert ReExported is FakeClock


def test_a_fake_layer_is_a_module_whose_forward_takes_the_works_time():
    clock = FakeClock()
    model = tc.Sequential(FakeLayer(FakeWork(clock, [2.0, 5.0])))
    assert [name for name, _ in model.named_modules()] == ["", "0"]
    assert model(3) == 3 and clock() == 2.0
    model(4)
    assert clock() == 7.0 and model[0].work.calls == [((3,), {}), ((4,), {})]
    with pytest.raises(TypeError, match="callable"):
        FakeLayer(42)
