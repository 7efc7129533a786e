"""Capacity plan by simulation (bench/simulation.py) of production's ways to run
process-scan, under the seed's load and heavier ones, with figures measured here
(bench/throughput.py) and published ones, each named below with its source or marked an
assumption.

    .venv/bin/python bench/capacity.py [--p95-target 300] [--seed 1] [--no-plots]
    .venv/bin/python bench/capacity.py --validate [-n 100] [--within 10]   # vs a real burst

Policies (docs/production.md; deployments/ecs-gpu/template.yaml; prefect.yaml):

- **push**: ``scanflow-cpu`` (``ecs:push`` on Prefect Cloud): a Fargate task of 2 vCPU and
  8 GB per run, concurrency limit 20, a cold start and image pull every run;
- **hybrid GPU**: ``scanflow-gpu``: our ECS worker (polling every 5 s) runs each scan on a
  g5.xlarge of an Auto Scaling group scaled 0..8 by ECS managed scaling, one run an
  instance (the deployment asks 4096 CPU units and a GPU);
- **always-on**: N workers that never scale (a process worker each on a 2 vCPU / 8 GB
  Fargate task, one scan at a time), billed all day.

Loads: the seed's (an upload every 4 minutes on average, more by day: a non-homogeneous
Poisson process over 24 h), 10x and 100x that, and 500 uploads within 10 s. Printed per
load and policy: upload-to-result latency p50/p95/max, queue wait p50/p95, cost per scan
and per month (30 days of that day) at list prices; then the smallest limits that meet
``--p95-target``. Plots go to bench/out/capacity-*.png.

``--validate`` checks the simulator against the local stack: a burst through the Lambda
trigger (as ``python bench/burst.py -n 100 --within 10`` sends it, on PostgreSQL), with
the process pool's service times measured on the same stack just before, run alone; it
prints measured against simulated drain time and latency p50/p95.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.simulation import (  # noqa: E402
    Policy,
    Result,
    burst_arrivals,
    percentile,
    poisson_arrivals,
    simulate,
)

OUT = Path(__file__).resolve().parent / "out"
DAY_S = 86_400.0
MONTH_DAYS = 30

# -- prices (USD, us-east-1, on demand, list) ---------------------------------------------
# https://www.vantage.sh/blog/fargate-pricing : Linux/x86, per second, 1-minute minimum
FARGATE_VCPU_HOUR = 0.04048
FARGATE_GB_HOUR = 0.004445
FARGATE_MIN_BILLED_S = 60.0
# https://www.factualminds.com/blog/amazon-ec2-on-demand-pricing-instance-families-2026/
# (us-east-1, June 2026: g5.xlarge $1.006/hr; Linux billed per second, 60 s minimum)
G5_XLARGE_HOUR = 1.006
EC2_MIN_BILLED_S = 60.0
# Assumption: g4dn.xlarge's commonly quoted list price; no stored source confirmed it.
G4DN_XLARGE_HOUR = 0.526
GPU_HOURLY = {"g5.xlarge": G5_XLARGE_HOUR, "g4dn.xlarge": G4DN_XLARGE_HOUR}

# -- the topology, from this repository ---------------------------------------------------
CPU_TASK_VCPU, CPU_TASK_GB = 2.0, 8.0  # prefect.yaml, ecs-cpu: cpu 2048, memory 8192
CPU_POOL_LIMIT = 20  # docs/production.md: scanflow-cpu's concurrency limit
GPU_MAX_INSTANCES = 8  # deployments/ecs-gpu/template.yaml MaxInstances default
GPU_PER_INSTANCE = 1  # a run asks 4096 CPU units and 1 GPU: one per g5.xlarge (4 vCPU)
GPU_SCALE_STEP = 4  # template: MaximumScalingStepSize
GPU_WORKER_POLL_S = 5.0  # template: the ECS worker's PREFECT_WORKER_QUERY_SECONDS
GPU_WORKER_VCPU, GPU_WORKER_GB = 0.5, 1.0  # template: the worker's Fargate service, 512/1024
IMAGE_COMPRESSED_MB = 386.0  # `python -m deployments.image_size` (2026-12-01), CPU image

# -- start-up and scaling -----------------------------------------------------------------
# https://elasticscale.com/blog/reduce-aws-fargate-pull-times-with-soci : a 413 MB image
# without SOCI, private subnet behind NAT: task created to started in 53-62 s (median 56).
FARGATE_REF_MB, FARGATE_REF_START_S = 413.0, 56.0
# https://qiita.com/kjm/items/a86c5a425c57439ecfa0 : ENI allocation ~10 s of a Fargate
# start; the rest scales with the image pulled (Fargate caches no layers).
FARGATE_FIXED_S = 10.0
FARGATE_PULL_S_PER_MB = (FARGATE_REF_START_S - FARGATE_FIXED_S) / FARGATE_REF_MB
# https://www.element7.io/2022/10/a-hidden-gem-two-ways-to-improve-aws-fargate-container-launch-times/
# zstd-compressed layers: "up to 27%" faster task starts (a what-if: --zstd).
ZSTD_START_SAVING = 0.27
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/throttling.html : Fargate
# launches 100 tasks at once per account and region, then 20 a second.
FARGATE_LAUNCH_BURST, FARGATE_LAUNCH_RATE = 100.0, 20.0
# Assumption: S3 event -> SQS -> Lambda -> the run created (the trigger's own call is ms).
TRIGGER_S = 1.0
# Assumption: Prefect Cloud's push pool sees a Scheduled run and calls RunTask.
PUSH_SUBMIT_S = 2.0
# Assumption: ECS managed scaling acts on a 1-minute CloudWatch metric.
GPU_SCALE_EVAL_S = 60.0
# http://www.daemonology.net/blog/2021-08-12-EC2-boot-time-benchmarking.html : Amazon
# Linux on c5.xlarge, RunInstances 1.5 s + pending->running 4.9 s + boot to sshd 22.8 s.
EC2_BOOT_S = 29.2
# Assumption: the ECS agent starts and registers the container instance.
ECS_REGISTER_S = 20.0
# Assumption: the CUDA image's compressed size (not measured; the CPU image is 386 MB) and
# an EC2 host's pull rate from ECR, decompression included.
GPU_IMAGE_MB, EC2_PULL_MB_S = 4000.0, 60.0
GPU_SCALE_OUT_S = EC2_BOOT_S + ECS_REGISTER_S + GPU_IMAGE_MB / EC2_PULL_MB_S
# Assumption: managed scaling's scale-in alarm wants ~15 minutes below its target.
GPU_SCALE_IN_IDLE_S = 900.0
# Assumption: a task on an instance that has the image (ECS_IMAGE_PULL_BEHAVIOR=prefer-cached).
ECS_WARM_TASK_START_S = 5.0
# Assumption: g5.xlarge's 4 vCPU and A10G against these 2 cores (decoding is most of a run;
# it gets twice the cores, inference goes to the GPU).
GPU_SERVICE_FACTOR = 0.6
# Assumption: a Fargate vCPU runs the flow as fast as one of these cores.
FARGATE_SERVICE_FACTOR = 1.0

# -- measured here (bench/throughput.py, 2026-12-01 07:11 UTC, 2 cores) --------------------
# A 20 s 640x480 30 fps synthetic scan, 3 runs submitted one at a time to an idle local
# worker, medians: Pending to the first task (process start, imports) 6.90 s; the first
# task's start to the final state 8.98 s (a fresh process: torch's import and the model's
# load are in it; the same scan takes 5.21 s in a warm process); the final state to the
# process's exit 1.78 s. SERVICE_CV: the spread of 11 warm runs (sd/mean).
SERVICE_S = 8.98
BEFORE_S = 6.90
AFTER_S = 1.78
SERVICE_CV = 0.09
LOCAL_POLL_S = 1.0  # the local stack's worker_query_seconds
LOCAL_POOL = 2  # the local pool's default concurrency

# -- loads ----------------------------------------------------------------------------------
SEED_MEAN_INTERVAL_S = 240.0  # the seed: an upload every 4 minutes on average
# Assumption: a daily cycle peaking at 14:00 local time at 1.8x the mean, 0.2x at 02:00.
PEAK_HOUR, DAY_AMPLITUDE = 14.0, 0.8


def fargate_start_s(image_mb: float = IMAGE_COMPRESSED_MB, zstd: bool = False) -> float:
    """A Fargate task's cold start for an image of ``image_mb`` compressed."""
    start = FARGATE_FIXED_S + FARGATE_PULL_S_PER_MB * image_mb
    return start * (1 - ZSTD_START_SAVING) if zstd else start


def fargate_price_s(vcpu: float, gb: float) -> float:
    return (vcpu * FARGATE_VCPU_HOUR + gb * FARGATE_GB_HOUR) / 3600.0


def day_rate(scale: float) -> tuple[Callable[[float], float], float]:
    """The seed's arrival rate times ``scale`` (uploads a second) and its peak."""
    mean = scale / SEED_MEAN_INTERVAL_S

    def rate(t: float) -> float:
        return mean * (1 + DAY_AMPLITUDE * math.cos(2 * math.pi * (t / 3600 - PEAK_HOUR) / 24))

    return rate, mean * (1 + DAY_AMPLITUDE)


@dataclass(frozen=True)
class Load:
    name: str
    arrivals: list[float]
    horizon_s: float | None  # a day's loads are billed for the day; a burst until it drains

    @property
    def per_month(self) -> bool:
        return self.horizon_s is not None


def loads(seed: int) -> list[Load]:
    found = []
    for scale in (1, 10, 100):
        rate, peak = day_rate(scale)
        rng = random.Random(seed * 1000 + scale)
        name = "seed" if scale == 1 else f"{scale}x seed"
        found.append(Load(name, poisson_arrivals(rate, peak, DAY_S, rng), DAY_S))
    found.append(Load("burst 500 in 10 s", burst_arrivals(500, 10.0), None))
    return found


def services(n: int, seed: int, mean: float = SERVICE_S, cv: float = SERVICE_CV) -> list[float]:
    """Service times: lognormal with the measured mean and spread."""
    rng = random.Random(seed)
    sigma = math.sqrt(math.log(1 + cv * cv))
    mu = math.log(mean) - sigma * sigma / 2
    return [rng.lognormvariate(mu, sigma) for _ in range(n)]


# -- policies --------------------------------------------------------------------------------


def push_policy(limit: int = CPU_POOL_LIMIT, zstd: bool = False) -> Policy:
    return Policy(
        name=f"push: Fargate task per run, limit {limit}",
        kind="push",
        slots=limit,
        start_s=TRIGGER_S + PUSH_SUBMIT_S + fargate_start_s(zstd=zstd),
        before_s=BEFORE_S,
        after_s=AFTER_S,
        service_factor=FARGATE_SERVICE_FACTOR,
        launch_burst=FARGATE_LAUNCH_BURST,
        launch_rate=FARGATE_LAUNCH_RATE,
        slot_price_s=fargate_price_s(CPU_TASK_VCPU, CPU_TASK_GB),
        min_billed_s=FARGATE_MIN_BILLED_S,
    )


def gpu_policy(max_instances: int = GPU_MAX_INSTANCES, instance: str = "g5.xlarge") -> Policy:
    return Policy(
        name=f"hybrid GPU: 0..{max_instances} {instance}",
        kind="autoscaled",
        slots=max_instances * GPU_PER_INSTANCE,  # the pool's limit kept at MaxInstances
        poll_s=GPU_WORKER_POLL_S,
        start_s=TRIGGER_S + ECS_WARM_TASK_START_S,
        before_s=BEFORE_S,
        after_s=AFTER_S,
        service_factor=GPU_SERVICE_FACTOR,
        max_instances=max_instances,
        per_instance=GPU_PER_INSTANCE,
        scale_eval_s=GPU_SCALE_EVAL_S,
        scale_out_s=GPU_SCALE_OUT_S,
        scale_in_idle_s=GPU_SCALE_IN_IDLE_S,
        scale_step=GPU_SCALE_STEP,
        instance_price_s=GPU_HOURLY[instance] / 3600.0,
        standing_price_s=fargate_price_s(GPU_WORKER_VCPU, GPU_WORKER_GB),
        min_billed_s=EC2_MIN_BILLED_S,
    )


def always_on_policy(workers: int) -> Policy:
    return Policy(
        name=f"always-on: {workers} worker{'s' if workers > 1 else ''} (2 vCPU Fargate)",
        kind="fixed",
        slots=workers,
        poll_s=LOCAL_POLL_S,
        start_s=TRIGGER_S,
        before_s=BEFORE_S,
        after_s=AFTER_S,
        service_factor=FARGATE_SERVICE_FACTOR,
        slot_price_s=fargate_price_s(CPU_TASK_VCPU, CPU_TASK_GB),
    )


# -- the plan ----------------------------------------------------------------------------------


def run_load(policy: Policy, load: Load, seed: int, service_s: float = SERVICE_S) -> Result:
    work = services(len(load.arrivals), seed, service_s)
    return simulate(policy, load.arrivals, work, load.horizon_s)


def smallest(
    make: Callable[[int], Policy],
    load: Load,
    seed: int,
    target_s: float,
    service_s: float = SERVICE_S,
    most: int = 400,
) -> tuple[int, Result] | None:
    """The smallest size whose p95 latency meets ``target_s`` (latency never grows with size:
    a bisection), or None up to ``most``."""
    lo, hi = 1, most
    top = run_load(make(hi), load, seed, service_s)
    if percentile(top.latencies, 95) > target_s:
        return None
    best = (hi, top)
    while lo < hi:
        mid = (lo + hi) // 2
        res = run_load(make(mid), load, seed, service_s)
        if percentile(res.latencies, 95) <= target_s:
            best, hi = (mid, res), mid
        else:
            lo = mid + 1
    return best


def row(load: Load, res: Result) -> str:
    lat, wait = res.latencies, res.waits
    month = res.cost_usd * MONTH_DAYS if load.per_month else math.nan
    month_txt = f"{month:10,.0f}" if load.per_month else f"{'-':>10s}"
    return (
        f"| {res.policy.name:42s} | {percentile(lat, 50):7.1f} | {percentile(lat, 95):7.1f} "
        f"| {max(lat):8.1f} | {percentile(wait, 50):6.1f} | {percentile(wait, 95):7.1f} "
        f"| {res.cost_per_scan:8.4f} | {month_txt} |"
    )


HEADER = (
    "| policy                                     | p50 s   | p95 s   | max s    "
    "| wait50 | wait95  | $/scan   | $/month    |\n"
    "| ------------------------------------------ | ------- | ------- | -------- "
    "| ------ | ------- | -------- | ---------- |"
)


def plan(seed: int, target_s: float, plots: bool, zstd: bool, service_s: float = SERVICE_S) -> None:
    start = fargate_start_s(zstd=zstd)
    print(f"service time {service_s:.2f} s (cv {SERVICE_CV:.2f}), per run before "
          f"{BEFORE_S:.2f} s / after {AFTER_S:.2f} s (measured here, bench/throughput.py); "
          f"Fargate cold start {start:.1f} s for {IMAGE_COMPRESSED_MB:.0f} MB; "
          f"GPU scale-out {GPU_SCALE_OUT_S:.0f} s after a 1-minute evaluation")  # fmt: skip
    curves: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for load in loads(seed):
        n = len(load.arrivals)
        print(f"\n{load.name}: {n} uploads" + (" in a day" if load.per_month else ""))
        print(HEADER)
        found = smallest(always_on_policy, load, seed, target_s, service_s)
        sized = found[0] if found else 1
        for policy in (push_policy(zstd=zstd), gpu_policy(), always_on_policy(sized)):
            print(row(load, run_load(policy, load, seed, service_s)))
        print(f"  meeting p95 <= {target_s:.0f} s:")
        for label, make in (
            ("push pool concurrency limit", lambda k: push_policy(k, zstd)),
            ("GPU MaxInstances (pool limit = it)", gpu_policy),
            ("always-on workers", always_on_policy),
        ):
            got = smallest(make, load, seed, target_s, service_s)
            if got is None:
                print(f"    {label}: none up to 400")
                continue
            k, res = got
            month = f", ${res.cost_usd * MONTH_DAYS:,.0f}/month" if load.per_month else ""
            print(f"    {label}: {k} (p95 {percentile(res.latencies, 95):.0f} s, "
                  f"${res.cost_per_scan:.4f}/scan{month})")  # fmt: skip
        if plots:
            curves[load.name] = _curves(load, seed, sized, service_s)
    if plots:
        _plot(curves, target_s)


def _curves(
    load: Load, seed: int, sized: int, service_s: float
) -> dict[str, list[tuple[int, float, float]]]:
    """(size, p95 latency, $ per scan) of each policy over a range of sizes."""
    top = max(8, 2 * sized)
    sizes = sorted({1, 2, 3, 4, 6, 8, 12, 16, 20, 30, 40, 60, 80, top} - {0})
    out: dict[str, list[tuple[int, float, float]]] = {}
    for label, make in (("push limit", push_policy), ("GPU max instances", gpu_policy),
                        ("always-on workers", always_on_policy)):  # fmt: skip
        pts = []
        for k in sizes:
            res = run_load(make(k), load, seed, service_s)
            pts.append((k, percentile(res.latencies, 95), res.cost_per_scan))
        out[label] = pts
    return out


def _plot(curves: dict[str, dict[str, list[tuple[int, float, float]]]], target_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    for load_name, by_policy in curves.items():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for label, pts in by_policy.items():
            ks = [p[0] for p in pts]
            ax1.plot(ks, [p[1] for p in pts], marker="o", label=label)
            ax2.plot(ks, [p[2] for p in pts], marker="o", label=label)
        ax1.axhline(target_s, color="grey", linestyle="--", label=f"target {target_s:.0f} s")
        ax1.set(xscale="log", yscale="log", xlabel="size (limit, instances, workers)",
                ylabel="p95 upload-to-result latency, s", title=load_name)  # fmt: skip
        ax2.set(xscale="log", yscale="log", xlabel="size", ylabel="USD per scan",
                title=f"{load_name}: cost")  # fmt: skip
        ax1.legend(fontsize=8)
        fig.tight_layout()
        path = OUT / f"capacity-{load_name.replace(' ', '-')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"plot: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p95-target", type=float, default=300.0,
                    help="seconds, upload to result (an assumption: docs set none)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--zstd", action="store_true", help="zstd image layers (-27%% start)")
    ap.add_argument("--service-s", type=float, default=None,
                    help=f"a run's work, s (default {SERVICE_S}: 20 s 640x480)")  # fmt: skip
    ap.add_argument("--validate", action="store_true", help="simulate the local pool vs a burst")
    ap.add_argument("-n", "--scans", type=int, default=100, help="--validate: the burst's size")
    ap.add_argument("--within", type=float, default=10.0, help="--validate: its span, s")
    ap.add_argument("--alone", type=int, default=3, help="--validate: runs measured alone")
    args = ap.parse_args()
    if args.validate:
        from bench.validation import validate

        validate(args.scans, args.within, args.alone)
        return 0
    service_s = SERVICE_S if args.service_s is None else args.service_s
    plan(args.seed, args.p95_target, not args.no_plots, args.zstd, service_s)
    return 0


def local_policy(
    before_s: float, after_s: float, slots: int = LOCAL_POOL, poll_s: float = LOCAL_POLL_S
) -> Policy:
    """The local stack's process pool (for --validate)."""
    return Policy("local process pool", "fixed", slots, poll_s=poll_s, before_s=before_s,
                  after_s=after_s)  # fmt: skip


def summary(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 50):.1f} s, p95 {percentile(values, 95):.1f} s, "
        f"max {max(values):.1f} s (mean {statistics.fmean(values):.1f})"
    )


if __name__ == "__main__":
    sys.exit(main())
