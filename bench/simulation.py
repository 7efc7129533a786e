"""A discrete-event simulation of scans flowing through a pool of capacity: uploads arrive,
wait for a place to run, pay a per-run start, are processed, and leave; plain ``heapq``.

Three kinds of capacity, the three ways production can run ``process-scan``
(bench/capacity.py gives them their figures):

- ``fixed``: ``slots`` always-on workers, each running one scan at a time (the local process
  pool; N always-on workers). Billed for the whole horizon whatever the load.
- ``push``: a fresh task per run (Prefect Cloud's ECS push pool: a Fargate task per run),
  at most ``slots`` at once (the pool's concurrency limit) and launched at the account's
  rate (a token bucket: ``launch_burst`` at once, ``launch_rate`` a second after). Each run
  pays ``start_s`` (the task's cold start and image pull) and is billed per second from its
  launch to its exit, at least ``min_billed_s``.
- ``autoscaled``: instances scaled from 0 to ``max_instances``, ``per_instance`` runs each
  (a hybrid ECS pool on an EC2 capacity provider). Every ``scale_eval_s`` the scaler
  launches up to ``scale_step`` instances for runs that have no place; an instance is ready
  ``scale_out_s`` after its launch, and terminated after ``scale_in_idle_s`` without a run.
  Billed per instance-second, at least ``min_billed_s`` each.

A run's life: it arrives; a worker that polls (``poll_s`` > 0) sees it at its next poll; it
waits for its place (a worker, a concurrency slot and a launch, a place on a ready
instance): its *queue wait* ends there; it then pays ``start_s`` and ``before_s`` (process
start, imports: Pending to its first task), is processed for its service time, and its
result exists (*latency*: arrival to result); its place is freed ``after_s`` later (the
process's exit).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["fixed", "push", "autoscaled"]


@dataclass(frozen=True)
class Policy:
    """How runs find capacity, what each pays to start, and the price of it."""

    name: str
    kind: Kind
    slots: int  # fixed: workers; push: concurrency limit; autoscaled: pool concurrency limit
    poll_s: float = 0.0  # a polling worker's interval (0: runs are dispatched at once)
    start_s: float = 0.0  # per run, on its place, before the flow's process starts
    before_s: float = 0.0  # the flow's process: start to its first task
    after_s: float = 0.0  # the last task's end to the process's exit
    service_factor: float = 1.0  # service times scaled for this capacity's speed
    # push
    launch_burst: float = math.inf
    launch_rate: float = math.inf
    # autoscaled
    max_instances: int = 0
    per_instance: int = 1
    scale_eval_s: float = 60.0
    scale_out_s: float = 0.0
    scale_in_idle_s: float = 900.0
    scale_step: int = 1_000_000
    # prices, USD a second
    slot_price_s: float = 0.0  # fixed: a worker; push: a task
    instance_price_s: float = 0.0  # autoscaled: an instance
    standing_price_s: float = 0.0  # always on whatever the load (e.g. the hybrid pool's worker)
    min_billed_s: float = 60.0


@dataclass
class Job:
    arrival: float
    service: float
    assigned: float = math.nan  # got its place: the end of its queue wait
    done: float = math.nan  # its result exists
    freed: float = math.nan  # its place is free again

    @property
    def wait(self) -> float:
        return self.assigned - self.arrival

    @property
    def latency(self) -> float:
        return self.done - self.arrival


@dataclass
class Result:
    policy: Policy
    jobs: list[Job]
    horizon_s: float  # what standing capacity is billed for
    cost_usd: float
    instances_launched: int = 0
    peak_busy: int = 0
    instance_seconds: float = 0.0

    @property
    def latencies(self) -> list[float]:
        return [j.latency for j in self.jobs]

    @property
    def waits(self) -> list[float]:
        return [j.wait for j in self.jobs]

    @property
    def drain_s(self) -> float:
        """First arrival to the last result."""
        return max(j.done for j in self.jobs) - min(j.arrival for j in self.jobs)

    @property
    def cost_per_scan(self) -> float:
        return self.cost_usd / len(self.jobs)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def billed(seconds: float, minimum: float) -> float:
    """Per-second billing with a minimum charge."""
    return max(seconds, minimum)


# -- arrivals -----------------------------------------------------------------------------


def poisson_arrivals(
    rate: Callable[[float], float], peak_rate: float, horizon_s: float, rng: random.Random
) -> list[float]:
    """A non-homogeneous Poisson process on [0, horizon_s) by thinning (Lewis and Shedler):
    candidates at ``peak_rate``, each kept with probability rate(t) / peak_rate."""
    times, t = [], 0.0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= horizon_s:
            return times
        if rng.random() * peak_rate <= rate(t):
            times.append(t)


def burst_arrivals(n: int, within_s: float) -> list[float]:
    """``n`` uploads spread evenly over ``within_s`` seconds (as bench/burst.py sends them)."""
    return [i * within_s / n for i in range(n)]


# -- the simulation -----------------------------------------------------------------------


@dataclass
class _Instance:
    launched: float
    ready: float = math.inf
    busy: int = 0
    idle_since: float | None = None
    terminated: float | None = None


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    ref: int = field(compare=False, default=-1)


class Simulation:
    """One policy, one list of arrivals and service times; ``run()`` once."""

    def __init__(
        self,
        policy: Policy,
        arrivals: Sequence[float],
        services: Sequence[float],
        horizon_s: float | None = None,
    ) -> None:
        if len(arrivals) != len(services):
            raise ValueError("one service time per arrival")
        self.p = policy
        self.jobs = [
            Job(a, s * policy.service_factor)
            for a, s in sorted(zip(arrivals, services, strict=True))
        ]
        self.horizon_s = horizon_s
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._waiting: deque[int] = deque()  # seen by the pool, without a place
        self._provisioning: deque[int] = deque()  # autoscaled: a slot, no instance yet
        self._busy = 0  # places taken (workers, concurrency slots, pool slots)
        self._peak = 0
        self._dispatch_at: set[float] = set()
        self._tokens = policy.launch_burst
        self._token_stamp = 0.0
        self._instances: list[_Instance] = []
        self._job_instance: dict[int, int] = {}
        self._eval_scheduled = False
        self._push_cost = 0.0

    # -- the event loop ----------------------------------------------------------------
    def _at(self, t: float, kind: str, ref: int = -1) -> None:
        heapq.heappush(self._events, _Event(t, next(self._seq), kind, ref))

    def run(self) -> Result:
        for i, job in enumerate(self.jobs):
            self._at(job.arrival, "arrive", i)
        now = 0.0
        while self._events:
            ev = heapq.heappop(self._events)
            now = ev.time
            getattr(self, "_on_" + ev.kind)(now, ev.ref)
        return self._result(now)

    def _next_poll(self, t: float) -> float:
        if self.p.poll_s <= 0:
            return t
        return math.ceil(t / self.p.poll_s - 1e-9) * self.p.poll_s

    def _wake(self, t: float) -> None:
        """Dispatch at the worker's next poll (at once without polling)."""
        when = self._next_poll(t)
        if when not in self._dispatch_at:
            self._dispatch_at.add(when)
            self._at(when, "dispatch")

    def _on_arrive(self, t: float, i: int) -> None:
        self._waiting.append(i)
        self._wake(t)

    def _on_dispatch(self, t: float, _: int) -> None:
        self._dispatch_at.discard(t)
        while self._waiting and self._busy < self.p.slots:
            i = self._waiting.popleft()
            self._busy += 1
            self._peak = max(self._peak, self._busy)
            if self.p.kind == "fixed":
                self._start(t, i, t)
            elif self.p.kind == "push":
                self._start(t, i, self._launch_token(t))
            else:
                self._provisioning.append(i)
        if self.p.kind == "autoscaled":
            self._place(t)

    def _start(self, t: float, i: int, assigned: float) -> None:
        p, job = self.p, self.jobs[i]
        job.assigned = assigned
        job.done = assigned + p.start_s + p.before_s + job.service
        job.freed = job.done + p.after_s
        if p.kind == "push":
            self._push_cost += billed(job.freed - assigned, p.min_billed_s) * p.slot_price_s
        self._at(job.freed, "free", i)

    def _on_free(self, t: float, i: int) -> None:
        self._busy -= 1
        if self.p.kind == "autoscaled":
            k = self._job_instance.pop(i)
            inst = self._instances[k]
            inst.busy -= 1
            if inst.busy == 0:
                inst.idle_since = t
                self._at(t + self.p.scale_in_idle_s, "idle_check", k)
        self._wake(t)

    # -- push: the account's launch rate ---------------------------------------------------
    def _launch_token(self, t: float) -> float:
        p = self.p
        if math.isinf(p.launch_rate):
            return t
        self._tokens = min(p.launch_burst, self._tokens + (t - self._token_stamp) * p.launch_rate)
        self._token_stamp = t
        self._tokens -= 1.0
        return t + max(0.0, -self._tokens) / p.launch_rate

    # -- autoscaled: instances -----------------------------------------------------------
    def _place(self, t: float) -> None:
        """Runs with a pool slot onto ready instances with room; else ask the scaler."""
        for k, inst in enumerate(self._instances):
            while (
                self._provisioning
                and inst.terminated is None
                and inst.ready <= t
                and inst.busy < self.p.per_instance
            ):
                i = self._provisioning.popleft()
                inst.busy += 1
                inst.idle_since = None
                self._job_instance[i] = k
                self._start(t, i, t)
        if self._provisioning and not self._eval_scheduled:
            self._eval_scheduled = True
            step = self.p.scale_eval_s
            self._at(math.floor(t / step + 1.0) * step, "scale_eval")

    def _on_scale_eval(self, t: float, _: int) -> None:
        self._eval_scheduled = False
        if not self._provisioning:
            return
        alive = [x for x in self._instances if x.terminated is None]
        room = sum(self.p.per_instance - x.busy for x in alive)  # ready or launching
        short = math.ceil(max(0, len(self._provisioning) - room) / self.p.per_instance)
        launch = min(short, self.p.scale_step, self.p.max_instances - len(alive))
        for _ in range(max(0, launch)):
            inst = _Instance(launched=t, ready=t + self.p.scale_out_s)
            self._instances.append(inst)
            self._at(inst.ready, "ready", len(self._instances) - 1)
        self._place(t)  # schedules the next evaluation while runs still have no place

    def _on_ready(self, t: float, k: int) -> None:
        inst = self._instances[k]
        inst.idle_since = t
        self._place(t)
        if inst.busy == 0:
            self._at(t + self.p.scale_in_idle_s, "idle_check", k)

    def _on_idle_check(self, t: float, k: int) -> None:
        inst = self._instances[k]
        idle = inst.idle_since
        idle_long = idle is not None and t - idle >= self.p.scale_in_idle_s - 1e-9
        if inst.terminated is None and inst.busy == 0 and idle_long:
            inst.terminated = t

    # -- the bill --------------------------------------------------------------------------
    def _result(self, end: float) -> Result:
        p = self.p
        last = max((j.freed for j in self.jobs), default=0.0)
        horizon = self.horizon_s if self.horizon_s is not None else last
        cost = p.standing_price_s * horizon
        if p.kind == "fixed":
            cost += p.slots * p.slot_price_s * horizon
        elif p.kind == "push":
            cost += self._push_cost
        inst_s = 0.0
        for inst in self._instances:
            up = (inst.terminated if inst.terminated is not None else end) - inst.launched
            inst_s += up
            cost += billed(up, p.min_billed_s) * p.instance_price_s
        return Result(p, self.jobs, horizon, cost, len(self._instances), self._peak, inst_s)


def simulate(
    policy: Policy,
    arrivals: Sequence[float],
    services: Sequence[float],
    horizon_s: float | None = None,
) -> Result:
    """Run one simulation (see the module's docstring)."""
    return Simulation(policy, arrivals, services, horizon_s).run()
