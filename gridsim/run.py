"""``python -m gridsim run``: broker, meters, aggregator and results on one machine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import multiprocessing as mp
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gridsim.aggregator.service import Aggregator, AggregatorConfig, AggregatorReport
from gridsim.config import RunConfig
from gridsim.data.households import generate_households
from gridsim.exceptions import ConfigError
from gridsim.learning.batched import TrainConfig
from gridsim.learning.centralized import train_centralized
from gridsim.learning.model import initial_parameters
from gridsim.learning.windows import MeterWindows, make_windows
from gridsim.ledger.audit import audit
from gridsim.ledger.writer import LedgerWriter
from gridsim.lifetime import die_with_parent
from gridsim.meter.agent import run_fleet
from gridsim.meter.training_pool import TrainingPool, limit_blas_threads
from gridsim.privacy.guard import MeterBudget
from gridsim.privacy.settings import (
    DPSettings,
    effective_budget,
    effective_mode,
    noise_to_signal,
    planned_noise_shares,
    resolve_dp,
)
from gridsim.progress import Progress
from gridsim.secagg.masking import max_scale
from gridsim.secagg.server import SecAggConfig
from gridsim.transport import codec
from gridsim.transport.broker import BrokerAddress, broker_for_run, raise_open_file_limit

log = logging.getLogger(__name__)


def meter_windows(meters: list[int], cfg: RunConfig) -> MeterWindows:
    load = generate_households(meters, days=cfg.days, seed=cfg.seed)
    return make_windows(load, test_days=cfg.test_days)


TRAINING_NICE = 10
"""Niceness of the training children under SecAgg+ (see :func:`training_pool`)."""


def training_pool(meters: list[int], cfg: RunConfig, threads: int | None = None) -> TrainingPool:
    """The batched local training of ``meters``, in child processes.

    ``threads`` (default: every core; in a ``--workers`` process, its share of the
    cores) single-threaded children, each training its share of the meters. One
    child with that many torch threads was slower alone (0.76 s against 0.61 s for
    500 meters on 2 cores) and far slower beside the agents' SecAgg+ work: torch's
    OpenMP workers stall at every barrier when a core is taken (a 0.55-s epoch took
    5 s beside one busy thread). Processes without barriers just share the cores.
    """
    data = meter_windows(meters, cfg)
    if threads is None:
        threads = os.cpu_count() or 1
    # Under SecAgg+ the agents' protocol stages (which every meter waits on) run
    # while the batch trains; at a lower priority the training takes the cycles
    # they leave (secure round 3.0 -> 2.6 s on 2 cores; the training ends later
    # but before the masked-input stage needs it).
    nice = TRAINING_NICE if cfg.secagg else 0
    return TrainingPool(
        data, seed=cfg.seed, child_threads=1, children=max(1, threads), child_nice=nice
    )


async def serve_meters(
    meters: list[int],
    address: BrokerAddress,
    session: str,
    cfg: RunConfig,
    stop: asyncio.Event | None = None,
    pool: TrainingPool | None = None,
    budget: MeterBudget | None = None,
    threads: int | None = None,
    trained: Callable[[float], None] | None = None,
) -> dict[str, int]:
    """Run the agents of ``meters`` in this process until the aggregator stops them.

    ``budget``: the privacy budget the meters enforce themselves (None: no check).
    ``trained``: called when a training batch of a pool made here finishes, with
    its ``time.perf_counter`` (the same clock in every process of the machine).
    The answer includes the training children's peak memory.
    """
    own = pool is None
    if pool is None:
        pool = training_pool(meters, cfg, threads)
        pool.on_trained = trained
    try:
        if own:
            pool.start_children()  # from this (the main) thread: see there
            await asyncio.to_thread(pool.warm_up)
        stats = await run_fleet(
            meters,
            address=address,
            session=session,
            pool=pool,
            seed=cfg.seed,
            dropout=cfg.dropout,
            dropout_mode=cfg.dropout_mode,
            stop=stop or asyncio.Event(),
            budget=budget,
            mqtt_client=cfg.mqtt_client,
        )
        stats["training_children_peak_rss_kb"] = sum(pool.child_peak_rss_kb.values())
        return stats
    finally:
        if own:
            pool.close()


def meter_budget(cfg: RunConfig) -> MeterBudget | None:
    """The budget meters enforce themselves: the run's, when DP is on and has one."""
    if effective_mode(cfg.dp, cfg.secagg) == "off":
        return None
    epsilon = effective_budget(cfg.epsilon, cfg.noise_multiplier)
    return None if epsilon is None else MeterBudget(epsilon, cfg.delta)


@dataclasses.dataclass(frozen=True)
class _Worker:
    """A ``--workers`` process as the aggregator's process sees it: the process,
    when its last training batch finished (a shared double, ``time.perf_counter``,
    0 before the first), and the receiving end of the pipe its meters' counts come
    back through at the end (a pipe, not a queue: a queue's lock is a named
    semaphore, which a worker ended by Ctrl-C would leave to be warned about)."""

    process: Any  # multiprocessing.Process
    trained_at: Any  # multiprocessing.RawValue("d")
    counts: Any  # multiprocessing.connection.Connection


def _worker_main(
    meters: list[int],
    url: str,
    session: str,
    cfg: RunConfig,
    threads: int,
    parent: int,
    trained_at: Any,
    counts: Any,
) -> None:
    """A ``--workers`` process: ``trained_at`` and ``counts`` (the sending end) are
    its :class:`_Worker`'s."""
    from gridsim.transport.broker import parse_broker_url

    die_with_parent(parent)  # a killed run leaves no meters behind
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    raise_open_file_limit()

    def trained(at: float) -> None:
        trained_at.value = at

    async def serve() -> dict[str, int]:
        # The parent ends this process with SIGTERM when no Stop is coming (Ctrl-C
        # there, or the aggregator failed): stop as after Ctrl-C, closing the
        # training pool, whose queues' semaphores would otherwise outlive us.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await serve_meters(
            meters,
            parse_broker_url(url),
            session,
            cfg,
            budget=meter_budget(cfg),
            threads=threads,
            trained=trained,
        )

    try:
        stats = asyncio.run(serve())
    except asyncio.CancelledError:
        return
    counts.send(stats)


def _process_tree_cpu_s(pids: list[int]) -> float | None:
    """CPU seconds used so far by ``pids`` and their living descendants (Linux
    ``/proc``, in clock ticks of 10 ms); None where /proc cannot tell."""
    parents: dict[int, list[int]] = {}
    used: dict[int, int] = {}
    try:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                # The fields after the command name (which may hold spaces and
                # brackets): ppid is the 2nd, utime and stime the 12th and 13th.
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                parents.setdefault(int(fields[1]), []).append(pid)
                used[pid] = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    total, todo = 0, list(pids)
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0)
        todo += parents.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def split_meters(meters: int, workers: int) -> list[list[int]]:
    return [list(range(meters))[i::workers] for i in range(workers)]


def default_out_dir() -> Path:
    """``runs/<timestamp>``, with a suffix when a run already took that second."""
    base = Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{n}")
        n += 1
    return candidate


def _peak_rss_mb(children_kb: int) -> float:
    """This process's peak resident memory plus its training children's.

    The training children run beside this process the whole run, so their peaks
    add up (an upper bound: the peaks need not coincide). Each child reports its
    own peak with its answers; the largest finished child counts where that is
    more (the broker, a --workers process).
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finished = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    children = max(finished, children_kb)
    return (own + children) / 1024.0


def aggregator_key(out: Path) -> Ed25519PrivateKey:
    """The aggregator's Ed25519 key kept in ``OUT/aggregator.key``.

    It signs the ledger's heads and the secure-aggregation requests. Created on
    first use (mode 0600) and reused when a run continues in the same folder, so a
    restarted aggregator extends the same log.
    """
    from cryptography.hazmat.primitives import serialization

    key_path = out / "aggregator.key"
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{key_path} is not an Ed25519 private key")
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    return key


def open_ledger(out: Path, session: str, key: Ed25519PrivateKey) -> LedgerWriter:
    """``OUT/ledger``, its heads signed with the aggregator's ``key``."""
    return LedgerWriter(out / "ledger", key, origin=f"gridsim.local/{session}")


def aggregator_config(
    cfg: RunConfig,
    session: str,
    dp: DPSettings | None,
    *,
    dim: int,
    expected_meters: int,
    min_meters: int,
) -> AggregatorConfig:
    """The aggregator's settings for a run (``run`` and the ``aggregator`` command)."""
    return AggregatorConfig(
        session=session,
        rounds=cfg.rounds,
        expected_meters=expected_meters,
        min_meters=min_meters,
        fraction=cfg.fraction,
        round_timeout_s=cfg.round_timeout_s,
        registration_timeout_s=cfg.registration_timeout_s,
        plan=train_plan(cfg, dp),
        seed=cfg.seed,
        secagg=secagg_config(cfg, dim, dp),
        dp=dp,
        mqtt_client=cfg.mqtt_client,
    )


def dp_settings(cfg: RunConfig, dim: int | None = None) -> DPSettings | None:
    """The run's DP settings, with the noise calibrated to ``--epsilon`` if given.

    ``dim`` is the model's parameter count (from the initial model if not given).
    Distributed rounds plan for the surviving meters that secure aggregation's
    dropout allowance leaves (:func:`~gridsim.privacy.settings.planned_noise_shares`).
    """
    if dim is None:
        dim = int(initial_parameters(cfg.seed).shape[0])
    return resolve_dp(
        cfg.dp,
        epsilon=cfg.epsilon,
        delta=cfg.delta,
        noise_multiplier=cfg.noise_multiplier,
        clip_norm=cfg.clip_norm,
        sampling_rate=cfg.fraction,
        rounds=cfg.rounds,
        secagg=cfg.secagg,
        dimension=dim,
        noise_shares=planned_noise_shares(cfg.meters, cfg.fraction, secagg_dropout(cfg)),
        bits=cfg.dp_bits,
    )


def train_plan(cfg: RunConfig, dp: DPSettings | None) -> TrainConfig:
    """What meters train with: clipped under DP, and noised by themselves in local mode."""
    return TrainConfig(
        cfg.local_epochs,
        cfg.batch_size,
        cfg.lr,
        clip_norm=dp.clip_norm if dp else 0.0,
        local_noise=dp.sigma if dp and dp.mode == "local" else 0.0,
    )


def dp_summary(dp: DPSettings | None, report: AggregatorReport) -> dict[str, Any]:
    """``summary.json``'s ``dp``: enough to recompute epsilon independently."""
    if dp is None:
        return {"mode": "off"}
    rounds = report.dp_released
    out: dict[str, Any] = {
        **dp.record(),
        "epsilon": dp.epsilon_after(rounds),
        # The other accountant as a cross-check (RDP, never below PLD); DDGauss has one.
        "epsilon_rdp": dp.epsilon_cross_check(rounds),
        "budget": dp.budget,
        "rounds": rounds,
        "stopped": report.dp_stopped,
    }
    if dp.sampling_rate < 1.0 and rounds > 0:
        # Amplification by sampling holds against whoever sees the models only; the
        # ledger and the announcements name the participants, so against their
        # readers a meter has the guarantee of its own participations, unamplified.
        counts: dict[int, int] = {}
        for outcome in report.outcomes:
            if outcome.train:
                for m in outcome.participants:
                    counts[m] = counts.get(m, 0) + 1
        most = max(counts.values(), default=0)
        out["max_participations"] = most
        out["epsilon_participation"] = dp.epsilon_after_unsampled(most) if most > 0 else 0.0
    if dp.ddgauss is not None:
        p = dp.ddgauss
        out.update(
            k_stddevs=p.k_stddevs if math.isfinite(p.k_stddevs) else None,
            share_stddev=p.integer_stddev,
            l2_bound=p.l2_sensitivity,
            epsilon_planned=p.epsilon,
        )
    return out


def secagg_dropout(cfg: RunConfig) -> float:
    """The dropout secure aggregation plans for (its graph bound needs < 0.5)."""
    return min(max(cfg.dropout, 0.05), 0.45)


def secagg_config(cfg: RunConfig, dim: int, dp: DPSettings | None = None) -> SecAggConfig | None:
    """Secure aggregation settings for a run (None with ``--no-secagg``).

    Under distributed DP the summed vectors are the DDGauss encodings: padded to
    a power of two, ``--dp-bits`` wide, and a round must keep at least the
    planned number of noise shares or it is abandoned.
    """
    if not cfg.secagg:
        return None
    neighbors: int | str | None = None
    if cfg.secagg_neighbors == "all":
        neighbors = "all"
    elif cfg.secagg_neighbors is not None:
        neighbors = int(cfg.secagg_neighbors)
    bits, min_survivors, clip = 32, 0, cfg.secagg_clip
    if dp is not None and dp.ddgauss is not None:
        bits, dim = dp.ddgauss.bits, dp.ddgauss.setup.dimension
        min_survivors = dp.ddgauss.setup.noise_shares
    elif dp is not None:
        # An update clipped to L2 norm c has no coordinate beyond c: with that
        # range nothing saturates. Local mode's own noise rides on the update:
        # 6 sd more, so it is not clipped away (a value saturates w.p. ~2e-9).
        clip = max(clip, dp.clip_norm)
        if dp.mode == "local":
            clip += 6.0 * dp.sigma
    return SecAggConfig(
        d=dim,
        bits=bits,
        clip=clip,
        # As fine as possible while the sum of every meter's input cannot wrap.
        scale=max_scale(clip, bits, cfg.meters),
        neighbors=neighbors,  # type: ignore[arg-type]
        dropout=secagg_dropout(cfg),
        min_survivors=min_survivors,
        stage_timeout_s=cfg.round_timeout_s,
    )


async def run_federation(
    cfg: RunConfig,
    address: BrokerAddress,
    session: str,
    signing_key: Ed25519PrivateKey,
    dp: DPSettings | None,
    progress: Progress | None = None,
    ledger: LedgerWriter | None = None,
) -> tuple[AggregatorReport, dict[str, int]]:
    """The aggregator in this process, meters here or in ``cfg.workers`` processes."""
    initial = initial_parameters(cfg.seed)
    if cfg.verify and cfg.workers != 1:
        raise ConfigError("--verify needs the meters in this process (--workers 1)")
    pool: TrainingPool | None = None
    if cfg.workers == 1:
        pool = training_pool(list(range(cfg.meters)), cfg)
        try:
            # In a thread, so Ctrl-C cancels this await rather than landing in the
            # middle of synchronous work, where a later await could swallow it.
            pool.start_children()  # from this (the main) thread: see there
            await asyncio.to_thread(pool.warm_up)
        except BaseException:
            pool.close()
            raise
        if cfg.verify:
            pool.quantized = {}
    quantized = pool.quantized if pool is not None else None
    workers: list[_Worker] = []

    def _workers_cpu_s() -> float:
        # This process (the aggregator) and the --workers processes with their
        # training children; the broker is not counted (nor with --workers 1).
        theirs = _process_tree_cpu_s([w.process.pid for w in workers])
        return time.process_time() + (theirs or 0.0)

    agg_cfg = aggregator_config(
        cfg,
        session,
        dp,
        dim=int(initial.shape[0]),
        expected_meters=cfg.meters,
        min_meters=max(1, math.ceil(cfg.meters * 0.5)),
    )
    aggregator = Aggregator(
        address,
        agg_cfg,
        initial,
        on_result=progress.round_done if progress else None,
        ledger=ledger,
        signing_key=signing_key,
        state_dir=Path(cfg.out) if cfg.out else None,
        plaintext=(lambda r: quantized.get(r, {})) if quantized is not None else None,
        cpu_clock=pool.cpu_s if pool is not None else _workers_cpu_s,
        trained_clock=(
            (lambda: pool.trained_at)
            if pool is not None
            else lambda: max((w.trained_at.value for w in workers), default=0.0) or None
        ),
    )
    agg_task = asyncio.create_task(aggregator.run())
    stop = asyncio.Event()
    finished = False
    fleet_task: asyncio.Task[dict[str, int]] | None = None
    try:
        if cfg.workers == 1:
            fleet_task = asyncio.create_task(
                serve_meters(
                    list(range(cfg.meters)),
                    address,
                    session,
                    cfg,
                    stop,
                    pool,
                    budget=meter_budget(cfg),
                )
            )
        else:
            ctx = mp.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // cfg.workers)
            limit_blas_threads(threads)
            for chunk in split_meters(cfg.meters, cfg.workers):
                trained_at = ctx.Value("d", 0.0, lock=False)
                counts, sender = ctx.Pipe(duplex=False)
                # Not daemonic: a worker trains in child processes of its own, like
                # this process does with --workers 1 (a daemonic process may not
                # start any). Its meters stop on the aggregator's Stop; the finally
                # below ends one that does not (at once after Ctrl-C or an error),
                # and one whose parent died gets SIGTERM (die_with_parent). It
                # ignores Ctrl-C, which reaches the whole process group: caught in
                # the middle of starting up (importing torch), Python would print a
                # traceback; this process ends it instead.
                p = ctx.Process(
                    target=_worker_main,
                    args=(
                        chunk,
                        address.url,
                        session,
                        cfg,
                        threads,
                        os.getpid(),
                        trained_at,
                        sender,
                    ),
                    daemon=False,
                )
                handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited
                try:
                    p.start()
                finally:
                    signal.signal(signal.SIGINT, handler)
                workers.append(_Worker(p, trained_at, counts))
        wait_on: list[asyncio.Future[Any]] = [agg_task]
        if fleet_task is not None:
            wait_on.append(fleet_task)
        done, _ = await asyncio.wait(wait_on, return_when=asyncio.FIRST_COMPLETED)
        if fleet_task in done:
            # Meters end on the aggregator's Stop, possibly a moment before the
            # aggregator's own task returns; only a failure of theirs is an error.
            fleet_task.result()
        report = await agg_task
        fleet_stats: dict[str, int] = {}
        if fleet_task is not None:
            try:
                # Meters stop on the aggregator's Stop; one that missed it is stopped here.
                async with asyncio.timeout(5):  # not wait_for: see Aggregator._wait_changed
                    fleet_stats = await asyncio.shield(fleet_task)
            except TimeoutError:
                stop.set()
                fleet_stats = await fleet_task
        for w in workers:
            # The aggregator's Stop ends them; their counts follow.
            await asyncio.to_thread(w.process.join, 30)
            if w.counts.poll():
                for key, value in w.counts.recv().items():
                    fleet_stats[key] = fleet_stats.get(key, 0) + value
        finished = True
        return report, fleet_stats
    finally:
        stop.set()
        for task in (agg_task, fleet_task):
            if task is not None:
                await _cancel_and_wait(task)
        for w in workers:
            if not finished:
                w.process.terminate()  # no Stop is coming: Ctrl-C, or the aggregator failed
            w.process.join(timeout=10)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(timeout=5)
        if pool is not None:
            pool.close()


async def _cancel_and_wait(task: asyncio.Task[Any], patience_s: float = 10.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every
    ``patience_s`` seconds it goes on: a cancellation swallowed somewhere below
    (asyncio.wait_for on Python 3.11 does that in a race) must not leave Ctrl-C
    waiting forever for a task that kept running."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=patience_s)
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved at exit


SECAGG_STAGES = ("advertise", "share", "masked_input", "unmask")
"""The secure-aggregation stages whose durations rounds.csv reports (empty when off)."""


def _rounds_table(results: list[codec.RoundResult]) -> list[dict[str, Any]]:
    """One row per training round; the eval columns measure the model that round produced."""
    rows = []
    train_results = [r for r in results if r.train]
    for i, r in enumerate(train_results):
        nxt = results[i + 1] if i + 1 < len(results) else None
        rows.append(
            {
                "round": r.round,
                "selected": r.selected,
                "participants": len(r.participants),
                "dropouts": len(r.dropouts),
                "rejected": r.rejected,
                "train_loss": r.train_loss,
                "mae": nxt.mae if nxt else None,
                "rmse": nxt.rmse if nxt else None,
                "nrmse": nxt.nrmse if nxt else None,
                "wall_s": r.wall_s,
                "train_s": r.train_s,
                "aggregate_s": r.aggregate_s,
                "transport_s": max(0.0, r.wall_s - r.train_s - r.aggregate_s),
                "cpu_s": r.cpu_s,
                "loop_cpu_s": r.loop_cpu_s,
                "train_done_s": r.train_done_s,
                **{f"secagg_{stage}_s": r.stages_s.get(stage) for stage in SECAGG_STAGES},
                "model_hash": r.model_hash,
            }
        )
    return rows


def secagg_summary(cfg: RunConfig, report: AggregatorReport) -> dict[str, Any]:
    stats = report.secagg_stats
    out: dict[str, Any] = {"enabled": cfg.secagg}
    if cfg.secagg:
        out.update(report.secagg_params)
        out.update(
            rounds_abandoned=stats.rounds_abandoned,
            abandon_reasons=stats.abandon_reasons,
            saturated_values=stats.saturated_values,
        )
        if cfg.verify:
            out.update(verified_rounds=stats.verified_rounds, verify_failures=stats.verify_failures)
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    with path.open("w", newline="") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run the whole system once; write OUT/ and return the summary."""
    cfg.validate()
    out = Path(cfg.out) if cfg.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    session = cfg.session or f"run-{secrets.token_hex(4)}"
    cfg = dataclasses.replace(cfg, out=str(out), session=session)
    cfg.write(out / "config.json")
    raise_open_file_limit()
    progress = Progress(cfg.rounds, cfg.meters, stream=sys.stderr)
    started = time.perf_counter()
    # One key signs the ledger's heads and the secure-aggregation requests.
    key = aggregator_key(out)
    dim = int(initial_parameters(cfg.seed).shape[0])
    dp = dp_settings(cfg, dim)  # calibrated to the budget before anything runs
    if dp is not None:
        ratio = noise_to_signal(dp, cfg.meters, dim)
        if ratio > 1:
            log.warning(
                "DP noise will outweigh the updates: each round's noise has about %.3gx the "
                "norm of the largest averaged update (%d meters, noise multiplier %.3g); expect "
                "the model to degrade. More meters, fewer rounds or a larger --epsilon help.",
                ratio,
                cfg.meters,
                dp.noise_multiplier,
            )
    with (
        open_ledger(out, session, key) as ledger,
        broker_for_run(cfg.broker, cfg.broker_kind) as address,
    ):
        log.info("broker %s, session %s, out %s", address.redacted_url, session, out)
        report, fleet = asyncio.run(
            run_federation(cfg, address, session, key, dp, progress, ledger)
        )
    wall = time.perf_counter() - started
    progress.close()

    rows = _rounds_table(report.results)
    _write_csv(out / "rounds.csv", rows)
    np.save(out / "model.npy", report.model)
    final = report.results[-1]
    baselines: dict[str, Any] = {"seasonal_naive": {"rmse": final.naive_rmse}}
    if cfg.centralized_baseline:
        data = meter_windows(list(range(cfg.meters)), cfg)
        _, central = train_centralized(
            data,
            initial_parameters(cfg.seed),
            epochs=cfg.rounds * cfg.local_epochs,
            seed=cfg.seed,
        )
        baselines["centralized"] = {k: central[k] for k in ("mae", "rmse", "nrmse")}
    else:
        baselines["centralized"] = None
    train_results = [r for r in report.results if r.train]
    summary = {
        "meters": cfg.meters,
        "registered": report.registered,
        "rounds": cfg.rounds,
        "rounds_completed": len(train_results),
        "wall_s": wall,
        "session": session,
        "out": str(out),
        "seed": cfg.seed,
        "metrics": {"mae": final.mae, "rmse": final.rmse, "nrmse": final.nrmse},
        "initial_metrics": {
            "mae": report.results[0].mae,
            "rmse": report.results[0].rmse,
            "nrmse": report.results[0].nrmse,
        },
        "baselines": baselines,
        "participants_per_round": [len(r.participants) for r in train_results],
        "final_evaluation_participants": len(final.participants),
        "dropouts_per_round": [len(r.dropouts) for r in train_results],
        "rejected_messages": report.rejected_messages,
        "aggregator_reconnects": report.reconnects,
        "model_hash": final.model_hash,
        "peak_rss_mb": _peak_rss_mb(fleet.get("training_children_peak_rss_kb", 0)),
        "meter_stats": fleet,
        "ledger": audit(out / "ledger").summary(),
        "secagg": secagg_summary(cfg, report),
        "dp": dp_summary(dp, report),
    }
    summary = dict(_clean(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
