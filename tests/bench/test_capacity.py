"""The capacity simulator (bench/simulation.py) and the plan's arithmetic (bench/capacity.py)
against figures worked out by hand: queueing on one worker, bursts draining, per-second
billing with its minimum, scale-out from zero and back, seeded arrivals."""

from __future__ import annotations

import math
import random

import pytest

from bench.capacity import (
    FARGATE_GB_HOUR,
    FARGATE_VCPU_HOUR,
    GPU_SCALE_OUT_S,
    day_rate,
    fargate_price_s,
    loads,
    push_policy,
    services,
)
from bench.simulation import (
    Policy,
    billed,
    burst_arrivals,
    percentile,
    poisson_arrivals,
    simulate,
)


def fixed(workers: int, **kw: float) -> Policy:
    return Policy("test", "fixed", workers, **kw)


def test_one_worker_queues_by_hand() -> None:
    # arrivals every 2 s, 5 s of work each: the k-th waits 3k s, leaves at 5(k+1)
    res = simulate(fixed(1), [0, 2, 4, 6], [5, 5, 5, 5])
    assert [j.wait for j in res.jobs] == [0, 3, 6, 9]
    assert [j.done for j in res.jobs] == [5, 10, 15, 20]
    assert res.latencies == [5, 8, 11, 14]
    assert res.drain_s == 20


def test_spaced_arrivals_never_wait() -> None:
    res = simulate(fixed(1), [0, 10, 20], [4, 4, 4])
    assert res.waits == [0, 0, 0]
    assert res.latencies == [4, 4, 4]


def test_per_run_overhead_and_polling() -> None:
    # the worker polls every 1 s: an upload at 0.25 s is seen at 1 s; it pays 2 s before
    # its work (3 s) and holds its place 1 s after, so the next one starts at 7 s
    res = simulate(fixed(1, poll_s=1.0, before_s=2.0, after_s=1.0), [0.25, 0.5], [3, 3])
    first, second = res.jobs
    assert first.assigned == 1.0 and first.done == 6.0 and first.freed == 7.0
    assert second.assigned == 7.0 and second.done == 12.0
    assert second.wait == pytest.approx(6.5)


def test_burst_drains_as_arithmetic_says() -> None:
    # 10 at once on 3 workers, each holding its place 1 + 4 + 0.5 s: four rounds
    n, c, hold = 10, 3, 5.5
    res = simulate(fixed(c, before_s=1.0, after_s=0.5), [0.0] * n, [4.0] * n)
    assert res.drain_s == pytest.approx((math.ceil(n / c) - 1) * hold + 5.0)
    assert res.peak_busy == c


def test_more_workers_never_increase_latency() -> None:
    rng = random.Random(3)
    arrivals = sorted(rng.uniform(0, 600) for _ in range(300))
    work = [rng.uniform(2, 12) for _ in arrivals]
    previous = None
    for c in range(1, 9):
        res = simulate(fixed(c, poll_s=1.0, before_s=2.0, after_s=1.0), arrivals, work)
        now = [percentile(res.latencies, q) for q in (50, 95, 100)]
        if previous is not None:
            assert all(a <= b + 1e-9 for a, b in zip(now, previous, strict=True)), (c, now)
        previous = now
    # by 8 workers the median is what it is with no queue at all
    unqueued = simulate(fixed(300, poll_s=1.0, before_s=2.0, after_s=1.0), arrivals, work)
    assert previous is not None
    assert previous[0] == pytest.approx(percentile(unqueued.latencies, 50), abs=0.5)


def test_percentile_matches_numpy_default() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48.0)
    assert percentile([7], 95) == 7


# -- billing ---------------------------------------------------------------------------------


def test_per_second_billing_with_a_one_minute_minimum() -> None:
    assert billed(30, 60) == 60
    assert billed(90.5, 60) == 90.5
    per_s = fargate_price_s(2, 8)
    assert per_s * 3600 == pytest.approx(2 * FARGATE_VCPU_HOUR + 8 * FARGATE_GB_HOUR)
    # a push run of 30 s is billed a minute; one of 90 s, 90 s
    policy = Policy("p", "push", 5, slot_price_s=per_s, min_billed_s=60)
    short, long = simulate(policy, [0], [30]), simulate(policy, [0], [90])
    assert short.cost_usd == pytest.approx(60 * per_s)
    assert long.cost_usd == pytest.approx(90 * per_s)


def test_always_on_workers_cost_the_horizon_whatever_the_load() -> None:
    policy = fixed(3, slot_price_s=0.01)
    assert simulate(policy, [0], [5], horizon_s=1000).cost_usd == pytest.approx(30.0)
    assert simulate(policy, [0, 1, 2], [5, 5, 5], horizon_s=1000).cost_usd == pytest.approx(30.0)


def test_push_limit_queues_and_launch_rate() -> None:
    # limit 1: the second run waits for the first's exit
    one = Policy("p", "push", 1, start_s=50, before_s=2, after_s=1)
    a, b = simulate(one, [0, 0], [10, 10]).jobs
    assert a.done == 62 and a.freed == 63 and b.assigned == 63 and b.done == 125
    # no limit, a bucket of 2 launches refilled at 1/s: the 3rd and 4th launch at 1 s, 2 s
    rate = Policy("p", "push", 100, launch_burst=2, launch_rate=1.0)
    assert [j.assigned for j in simulate(rate, [0] * 4, [1] * 4).jobs] == [0, 0, 1, 2]


def test_scale_out_from_zero_and_in_again() -> None:
    policy = Policy(
        "gpu", "autoscaled", 4, max_instances=2, per_instance=1, scale_eval_s=60,
        scale_out_s=100, scale_in_idle_s=900, start_s=5, instance_price_s=1.0,
    )  # fmt: skip
    res = simulate(policy, [10.0], [20.0])
    job = res.jobs[0]
    # seen at once, the scaler's next minute (60 s) launches one, ready at 160 s
    assert job.assigned == 160 and job.done == 185
    assert res.instances_launched == 1
    # billed from launch (60 s) to 900 s idle after the run left (185 s)
    assert res.instance_seconds == pytest.approx(185 + 900 - 60)
    assert res.cost_usd == pytest.approx(185 + 900 - 60)
    # three at once with 2 instances at most: the third waits for a free instance
    three = simulate(policy, [0, 0, 0], [20, 20, 20])
    assert three.instances_launched == 2
    assert sorted(j.assigned for j in three.jobs) == [160, 160, 185]


def test_the_plans_gpu_scale_out_adds_up() -> None:
    assert GPU_SCALE_OUT_S > 60  # boot, registration and a multi-GB image pull


# -- loads -----------------------------------------------------------------------------------


def test_seeded_day_of_uploads() -> None:
    first, again = loads(7), loads(7)
    assert [x.arrivals for x in first] == [x.arrivals for x in again]
    seed, ten, hundred, burst = first
    # the seed's mean: one upload every 4 minutes, 360 a day (Poisson: sd ~19)
    assert 300 < len(seed.arrivals) < 420
    assert 3400 < len(ten.arrivals) < 3800 and 35_000 < len(hundred.arrivals) < 37_000
    # daytime peak: more uploads between 10:00 and 18:00 than between 22:00 and 06:00
    day = sum(1 for t in hundred.arrivals if 10 * 3600 <= t < 18 * 3600)
    night = sum(1 for t in hundred.arrivals if t < 6 * 3600 or t >= 22 * 3600)
    assert day > 3 * night
    assert burst.arrivals == burst_arrivals(500, 10.0) and max(burst.arrivals) < 10


def test_thinning_keeps_the_mean_rate() -> None:
    rate, peak = day_rate(10)
    times = poisson_arrivals(rate, peak, 86_400, random.Random(5))
    assert len(times) == pytest.approx(86_400 * 10 / 240, rel=0.05)
    assert times == sorted(times)


def test_service_times_have_the_measured_mean() -> None:
    got = services(20_000, 1, mean=10.0, cv=0.2)
    mean = sum(got) / len(got)
    sd = math.sqrt(sum((x - mean) ** 2 for x in got) / len(got))
    assert mean == pytest.approx(10.0, rel=0.01) and sd / mean == pytest.approx(0.2, rel=0.05)


def test_push_policy_pays_the_cold_start_per_run() -> None:
    plain, zstd = push_policy(), push_policy(zstd=True)
    assert zstd.start_s < plain.start_s
    res = simulate(plain, [0, 1000], [10, 10])
    assert res.latencies[0] == pytest.approx(plain.start_s + plain.before_s + 10)
    assert res.latencies[1] == pytest.approx(res.latencies[0])  # no warm capacity to reuse
