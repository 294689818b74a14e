"""End-to-end FL rounds over Mosquitto, split into train / transport / aggregate.

Runs the real system (private Mosquitto, one MQTT connection per meter, the
aggregator service) for ``--rounds`` rounds and reports medians per round,
beside what the same local training costs batched and as a per-meter loop,
and Flower's simulation of the same FedAvg with the same data and model.
The plain and SecAgg+ systems run ``--repeat`` times each, alternating, and
their rounds are pooled: on a shared machine whose speed drifts over minutes a
single run of each compared one slow spell with another (the same version's
ratio ranged 1.35-1.43x in two runs an hour apart, its plain round 1.42-1.65 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gridsim.config import MQTT_CLIENTS, RunConfig
from gridsim.learning.batched import BatchedTrainer, TrainConfig
from gridsim.learning.model import initial_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each of the plain and SecAgg+ systems, alternating (their rounds "
        "pooled): the machine's drift over minutes hits both alike",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--mqtt-client", choices=MQTT_CLIENTS, default=RunConfig().mqtt_client, help="see run"
    )
    parser.add_argument(
        "--loop-sample",
        type=int,
        default=50,
        help="meters timed one by one for the per-meter-loop comparison (0: skip it)",
    )
    parser.add_argument(
        "--flower-rounds", type=int, default=2, help="rounds of the Flower peer (0 skips it)"
    )
    parser.add_argument(
        "--with-dp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the default configuration (SecAgg+ with distributed DP)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="also time SecAgg+ rounds in which each meter crashes with this probability, "
        "at a random stage (0 skips them)",
    )
    parser.add_argument("--out", help="keep the run's output folder here")


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in rows))


def _local_training(cfg: RunConfig, loop_sample: int) -> dict[str, Any]:
    """One local epoch of every meter: batched (as gridsim runs it) and one meter at a time."""
    from gridsim.run import meter_windows

    data = meter_windows(list(range(cfg.meters)), cfg)
    trainer = BatchedTrainer(TrainConfig(cfg.local_epochs, cfg.batch_size, cfg.lr))
    model = initial_parameters(cfg.seed)
    trainer.train(model, data.select(np.arange(min(8, cfg.meters))), seed=0, round_=0)  # warm-up
    batched = []
    for r in range(3):
        start = time.perf_counter()
        trainer.train(model, data, seed=cfg.seed, round_=r)
        batched.append(time.perf_counter() - start)
    result: dict[str, Any] = {"batched_epoch_s": statistics.median(batched)}
    sample = min(loop_sample, cfg.meters)
    if sample <= 0:
        return result  # the per-meter loop was not asked for
    start = time.perf_counter()
    for i in range(sample):
        trainer.train(model, data.select(np.array([i])), seed=cfg.seed, round_=0)
    loop_s = (time.perf_counter() - start) * cfg.meters / sample
    return result | {
        "per_meter_loop_epoch_s": loop_s,
        "per_meter_loop_measured_on": sample,
        "speedup": loop_s / statistics.median(batched),
    }


def _run_once(
    args: argparse.Namespace, out: Path, *, secagg: bool, dp: str = "off", dropout: float = 0.0
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Run the whole system once (DP off unless ``dp`` says): its summary and rounds."""
    import csv

    from gridsim.run import run as run_system

    cfg = RunConfig(
        meters=args.meters,
        rounds=args.rounds,
        seed=args.seed,
        workers=args.workers,
        mqtt_client=args.mqtt_client,
        centralized_baseline=False,
        out=str(out),
        secagg=secagg,
        dp=dp,
        dropout=dropout,
    )
    summary = run_system(cfg)
    with (out / "rounds.csv").open() as f:
        return summary, list(csv.DictReader(f))


def _system(
    runs: list[tuple[dict[str, Any], list[dict[str, str]]]], *, secagg: bool, dropout: float = 0.0
) -> dict[str, Any]:
    """Summarise the rounds of one or more runs of the same system, pooled."""
    summary = runs[-1][0]
    rows = [row for _, run_rows in runs for row in run_rows]
    # The first round pays one-off costs (torch warm-up); medians hide it, max shows it.
    walls = [float(r["wall_s"]) for r in rows]
    # Empty when a round has no figure (meters in other processes).
    done = [float(r["train_done_s"]) for r in rows] if all(r["train_done_s"] for r in rows) else []
    msgs = sum(2 * int(r["participants"]) + 1 for r in rows)
    update_bytes = 4 * int(initial_parameters(0).shape[0])
    stages = {}
    if secagg:
        from gridsim.run import SECAGG_STAGES

        # How long each SecAgg+ stage stayed open (medians): where a secure round's
        # time goes beyond training.
        stages = {
            stage: _median(rows, f"secagg_{stage}_s")
            for stage in SECAGG_STAGES
            if all(r[f"secagg_{stage}_s"] for r in rows)
        }
    return {
        "secagg": secagg,
        "dp": summary["dp"]["mode"],
        "dropout": dropout,
        "runs": len(runs),
        "rounds_pooled": len(rows),
        "median_dropouts": _median(rows, "dropouts"),
        "median_round_s": statistics.median(walls),
        "max_round_s": max(walls),
        "median_train_s": _median(rows, "train_s"),
        "median_transport_s": _median(rows, "transport_s"),
        "median_aggregate_s": _median(rows, "aggregate_s"),
        # CPU seconds of the round (this process and the training children; the
        # broker's are not counted): steadier than wall time on a noisy machine.
        "median_cpu_s": _median(rows, "cpu_s") if all(r["cpu_s"] for r in rows) else None,
        # CPU seconds of the event-loop thread that runs the aggregator and, here, all
        # 500 meters' agents, and the share of the round it was busy: near 1, that
        # one thread (Python, one GIL) sets the pace, not the two cores.
        "median_loop_cpu_s": _median(rows, "loop_cpu_s"),
        "median_loop_busy": float(
            statistics.median(float(r["loop_cpu_s"]) / float(r["wall_s"]) for r in rows)
        ),
        "median_stage_s": stages,
        # When the meters' training batch finished, seconds into the round, and what
        # the round took after it (uploads, SecAgg+ unmasking, ledger): before it
        # the two cores are shared with the training, after it one event loop runs.
        "median_train_done_s": statistics.median(done) if done else None,
        "median_after_training_s": (
            statistics.median(w - t for w, t in zip(walls, done, strict=True)) if done else None
        ),
        # The plain protocol's count (one announcement, two messages per
        # participant); a secure round's dozen per meter are not counted, so no
        # figure rather than a wrong one.
        "messages_per_s": None if secagg else msgs / sum(walls),
        "payload_mb_per_s": None if secagg else msgs * update_bytes / sum(walls) / 1e6,
        "run_wall_s": statistics.median(s["wall_s"] for s, _ in runs),
        "peak_rss_mb": max(s["peak_rss_mb"] for s, _ in runs),
        "final_rmse": summary["metrics"]["rmse"],
        "rounds_abandoned": summary["secagg"].get("rounds_abandoned", 0),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gridsim-bench-"))
    plain_runs, secure_runs = [], []
    for i in range(max(1, args.repeat)):
        # Alternating, so that a machine slower for a minute slows both alike.
        suffix = f"-{i + 1}" if args.repeat > 1 else ""
        plain_runs.append(_run_once(args, out / f"plain{suffix}", secagg=False))
        secure_runs.append(_run_once(args, out / f"secagg{suffix}", secagg=True))
    plain = _system(plain_runs, secagg=False)
    secure = _system(secure_runs, secagg=True)
    private = None
    if args.with_dp:
        # The default configuration: SecAgg+ with DDGauss noise shares (epsilon 8).
        private = _system(
            [_run_once(args, out / "secagg-ddgauss", secagg=True, dp="distributed")], secagg=True
        )
    crashing = None
    if args.dropout > 0:
        # Meters crash at a random stage; the stages stop waiting for them, and the
        # aggregator recovers the dropped meters' masks.
        crashing = _system(
            [_run_once(args, out / "secagg-dropout", secagg=True, dropout=args.dropout)],
            secagg=True,
            dropout=args.dropout,
        )
    cfg = RunConfig(meters=args.meters, rounds=args.rounds, seed=args.seed)
    result: dict[str, Any] = {
        "benchmark": "e2e",
        "meters": args.meters,
        "rounds": args.rounds,
        "repeat": max(1, args.repeat),
        "model_parameters": int(initial_parameters(args.seed).shape[0]),
        "broker": "mosquitto",
        "mqtt_client": args.mqtt_client,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "gridsim": plain,
        "gridsim_secagg": secure,
        "secagg_round_overhead": secure["median_round_s"] / plain["median_round_s"],
        "secagg_round_cpu_overhead": (
            secure["median_cpu_s"] / plain["median_cpu_s"]
            if secure["median_cpu_s"] and plain["median_cpu_s"]
            else None
        ),
        "local_training": _local_training(cfg, args.loop_sample),
    }
    if private is not None:
        result["gridsim_secagg_ddgauss"] = private
        result["secagg_ddgauss_round_overhead"] = (
            private["median_round_s"] / plain["median_round_s"]
        )
    if crashing is not None:
        result["gridsim_secagg_dropout"] = crashing
        result["secagg_dropout_round_overhead"] = (
            crashing["median_round_s"] / plain["median_round_s"]
        )
    if args.flower_rounds > 0:
        try:
            from gridsim.bench.flower_peer import flower_fedavg_round_seconds
        except ImportError as exc:
            result["flower"] = {"skipped": f"flower peer unavailable: {exc}"}
        else:
            result["flower"] = flower_fedavg_round_seconds(
                args.meters, args.flower_rounds, seed=args.seed
            )
        flower_round = result["flower"].get("median_round_s")
        if flower_round:
            result["gridsim_vs_flower_round_speedup"] = flower_round / plain["median_round_s"]
    (out / "bench_e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
