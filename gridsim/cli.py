"""The command line: ``python -m gridsim {run,meters,aggregator,audit,analyze,broker,bench}``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from gridsim.config import DROPOUT_MODES, MQTT_CLIENTS, RunConfig
from gridsim.exceptions import ConfigError, GridsimError
from gridsim.privacy.settings import DEFAULT_EPSILON

log = logging.getLogger("gridsim")


def _parse_ids(text: str) -> list[int]:
    """``0-99,200,300-310`` to a sorted list of meter ids."""
    ids: set[int] = set()
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if first < 0 or last < first:
                raise ValueError(part)
            ids.update(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad meter id list {text!r} (e.g. 0-4999,6000)") from None
    return sorted(ids)


def _add_dropout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="probability that a selected meter vanishes in a round, at a random "
        "protocol stage (testing)",
    )
    p.add_argument(
        "--dropout-mode",
        choices=DROPOUT_MODES,
        default="crash",
        help="crash: a vanishing meter drops its connection without a goodbye (the "
        "broker publishes its will) and comes back as a restarted meter that sits the "
        "round out, so the round stops waiting for it at once; hang: it stays "
        "connected and silent, and the round waits for it until --round-timeout",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--seed", type=int, default=d.seed, help="seed of data, model and dropouts")
    p.add_argument("--session", default=d.session, help="session name shared by all processes")
    p.add_argument("--days", type=int, default=d.days, help="days of load history per meter")
    p.add_argument("--test-days", type=int, default=d.test_days, help="held-out days per meter")
    p.add_argument(
        "--mqtt-client",
        choices=MQTT_CLIENTS,
        default=d.mqtt_client,
        help="MQTT client of the aggregator and meters: lean (MQTT 3.1.1 on asyncio, a "
        "tenth of the CPU per message) or aiomqtt (over paho)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_training(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--rounds", type=int, default=d.rounds, help="federated training rounds")
    p.add_argument("--fraction", type=float, default=d.fraction, help="meters selected per round")
    p.add_argument("--local-epochs", type=int, default=d.local_epochs, help="epochs per round")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="local minibatch size")
    p.add_argument("--lr", type=float, default=d.lr, help="local Adam learning rate")
    p.add_argument(
        "--round-timeout",
        type=float,
        default=d.round_timeout_s,
        help="seconds a round waits for late meters before counting them as dropouts",
    )
    p.add_argument(
        "--registration-timeout",
        type=float,
        default=d.registration_timeout_s,
        help="seconds to wait for all meters to say hello before the first round",
    )


def _add_secagg(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument(
        "--no-secagg",
        action="store_true",
        help="send model updates in the clear instead of through SecAgg+",
    )
    p.add_argument(
        "--secagg-neighbors",
        help="degree k of the SecAgg+ neighbour graph, or 'all' for classic SecAgg "
        "(default: the smallest safe k for the population and dropout)",
    )
    p.add_argument(
        "--secagg-clip",
        type=float,
        default=d.secagg_clip,
        help="per-coordinate clipping range of updates before quantisation",
    )


def _add_dp(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument(
        "--dp",
        choices=["auto", "off", "central", "local", "distributed"],
        default=d.dp,
        help="meter-level differential privacy of the model. distributed: DDGauss noise "
        "shares added by the meters inside secure aggregation (auto picks it with SecAgg+, "
        "off without); central: DP-FedAvg noise on the unmasked sum; local: each meter "
        "noises its own update",
    )
    p.add_argument(
        "--epsilon",
        type=float,
        help="privacy budget of the run: the noise is calibrated to it before it starts "
        f"(default {DEFAULT_EPSILON:g} unless --noise-multiplier is given)",
    )
    p.add_argument("--delta", type=float, default=d.delta, help="DP delta")
    p.add_argument(
        "--noise-multiplier",
        type=float,
        help="noise sd over the clip norm, instead of --epsilon (the run reports its epsilon)",
    )
    p.add_argument(
        "--clip-norm", type=float, default=d.clip_norm, help="L2 bound of each meter's update"
    )
    p.add_argument(
        "--dp-bits",
        type=int,
        default=d.dp_bits,
        help="distributed DP: bits of the modular sum (DDGauss' b)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridsim", description="Privacy-preserving smart-grid edge simulator."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fmt = argparse.ArgumentDefaultsHelpFormatter
    run = sub.add_parser(
        "run", help="run broker, meters and aggregator on this machine", formatter_class=fmt
    )
    run.add_argument("--meters", type=int, default=RunConfig().meters, help="meter agents")
    run.add_argument("--broker", help="mqtt[s]://[user:pass@]host:port (default: a private one)")
    run.add_argument(
        "--broker-kind",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="which private broker to start (auto: Mosquitto if installed)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes to spread meters over, each with its own training children "
        "(--verify needs 1)",
    )
    _add_dropout(run)
    run.add_argument(
        "--no-centralized",
        action="store_true",
        help="skip the centralised baseline (trained on pooled data)",
    )
    run.add_argument("--out", help="output folder (default runs/<timestamp>/)")
    run.add_argument(
        "--verify",
        action="store_true",
        help="check every unmasked sum against the plain sum (simulation only)",
    )
    _add_common(run)
    _add_training(run)
    _add_secagg(run)
    _add_dp(run)

    meters = sub.add_parser(
        "meters", help="run meter agents against an existing broker", formatter_class=fmt
    )
    meters.add_argument("--broker", required=True)
    meters.add_argument("--ids", type=_parse_ids, required=True, help="e.g. 0-4999")
    _add_dropout(meters)
    meters.add_argument(
        "--epsilon",
        type=float,
        help="the meters' own privacy budget: they account each round's announced DP "
        "parameters and stay out of rounds that would spend more (default: no check)",
    )
    meters.add_argument(
        "--delta", type=float, default=1e-5, help="the largest DP delta the meters accept"
    )
    _add_common(meters)

    agg = sub.add_parser(
        "aggregator", help="run the aggregator against an existing broker", formatter_class=fmt
    )
    agg.add_argument("--broker", required=True)
    agg.add_argument("--meters", type=int, required=True, help="meters to wait for")
    agg.add_argument("--min-meters", type=int, help="start with this many if not all came")
    agg.add_argument(
        "--out", help="folder for summary.json and the ledger (default runs/<timestamp>/)"
    )
    _add_common(agg)
    _add_training(agg)
    _add_secagg(agg)
    _add_dp(agg)

    audit = sub.add_parser("audit", help="verify a run's ledger (exit 0 intact, 1 tampered)")
    from gridsim.ledger.audit import configure_parser

    configure_parser(audit)

    broker = sub.add_parser("broker", help="run Mosquitto with broker/mosquitto.conf")
    broker.add_argument("--config", type=Path, help="config file (default broker/mosquitto.conf)")

    analyze = sub.add_parser(
        "analyze",
        help="privacy-utility: forecast error against epsilon per DP mode (JSON)",
        formatter_class=fmt,
    )
    from gridsim.analyze import add_arguments as add_analyze_arguments

    add_analyze_arguments(analyze)

    bench = sub.add_parser("bench", help="benchmarks; each prints one JSON document")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    from gridsim.bench import BENCHMARKS

    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"gridsim.bench.{name}")
        except ImportError:
            continue  # a benchmark whose module is not part of this build
        bp = bench_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(bp)
    return parser


def _run_config(args: argparse.Namespace, **extra: object) -> RunConfig:
    return RunConfig(
        meters=getattr(args, "meters", 1),
        rounds=getattr(args, "rounds", 1),
        seed=args.seed,
        broker=getattr(args, "broker", None),
        broker_kind=getattr(args, "broker_kind", "auto"),
        session=args.session,
        workers=getattr(args, "workers", 1),
        mqtt_client=getattr(args, "mqtt_client", "lean"),
        dropout=getattr(args, "dropout", 0.0),
        dropout_mode=getattr(args, "dropout_mode", "crash"),
        fraction=getattr(args, "fraction", 1.0),
        days=args.days,
        test_days=args.test_days,
        local_epochs=getattr(args, "local_epochs", 1),
        batch_size=getattr(args, "batch_size", 32),
        lr=getattr(args, "lr", 3e-3),
        round_timeout_s=getattr(args, "round_timeout", 60.0),
        registration_timeout_s=getattr(args, "registration_timeout", 120.0),
        centralized_baseline=not getattr(args, "no_centralized", False),
        secagg=not getattr(args, "no_secagg", False),
        secagg_neighbors=getattr(args, "secagg_neighbors", None),
        secagg_clip=getattr(args, "secagg_clip", 0.5),
        verify=getattr(args, "verify", False),
        dp=getattr(args, "dp", "auto"),
        dp_bits=getattr(args, "dp_bits", 20),
        epsilon=getattr(args, "epsilon", None),
        delta=getattr(args, "delta", 1e-5),
        noise_multiplier=getattr(args, "noise_multiplier", None),
        clip_norm=getattr(args, "clip_norm", 1.0),
        out=getattr(args, "out", None),
    ).validate()


def _cmd_run(args: argparse.Namespace) -> int:
    from gridsim.run import run

    summary = run(_run_config(args))
    m, b = summary["metrics"], summary["baselines"]
    central = b["centralized"]["rmse"] if b["centralized"] else None
    print(
        f"{summary['rounds_completed']} rounds with {summary['meters']} meters in "
        f"{summary['wall_s']:.1f} s: RMSE {m['rmse']:.4f} kW (nRMSE {m['nrmse']:.3f}); "
        f"seasonal-naive {b['seasonal_naive']['rmse']:.4f}"
        + (f", centralised {central:.4f}" if central is not None else "")
        + f". Results in {Path(summary.get('out', args.out or '')) or 'runs/'}"
    )
    return 0


def _cmd_meters(args: argparse.Namespace) -> int:
    from gridsim.privacy.guard import MeterBudget
    from gridsim.run import serve_meters
    from gridsim.transport.broker import parse_broker_url, raise_open_file_limit

    if not args.session:
        raise ConfigError("--session is required so meters and aggregator find each other")
    cfg = _run_config(args, meters=len(args.ids))
    raise_open_file_limit()
    budget = MeterBudget(args.epsilon, args.delta) if args.epsilon is not None else None
    stats = asyncio.run(
        serve_meters(args.ids, parse_broker_url(args.broker), args.session, cfg, budget=budget)
    )
    print(json.dumps(stats))
    return 0


def _cmd_aggregator(args: argparse.Namespace) -> int:
    from gridsim.aggregator.service import Aggregator
    from gridsim.learning.model import initial_parameters
    from gridsim.progress import Progress
    from gridsim.run import (
        aggregator_config,
        aggregator_key,
        default_out_dir,
        dp_settings,
        dp_summary,
        open_ledger,
        secagg_summary,
    )
    from gridsim.transport.broker import parse_broker_url

    if not args.session:
        raise ConfigError("--session is required so meters and aggregator find each other")
    cfg = _run_config(args)
    initial = initial_parameters(cfg.seed)
    agg_cfg = aggregator_config(
        cfg,
        args.session,
        dp_settings(cfg, int(initial.shape[0])),
        dim=int(initial.shape[0]),
        expected_meters=args.meters,
        min_meters=args.min_meters or args.meters,
    )
    out = Path(args.out) if args.out else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    key = aggregator_key(out)
    ledger = open_ledger(out, args.session, key)
    progress = Progress(cfg.rounds, args.meters)
    agg = Aggregator(
        parse_broker_url(args.broker),
        agg_cfg,
        initial,
        on_result=progress.round_done,
        ledger=ledger,
        signing_key=key,
        state_dir=out,
    )
    with ledger:
        report = asyncio.run(agg.run())
    progress.close()
    final = report.results[-1]
    train = [r for r in report.results if r.train]
    summary = {
        "rounds_completed": len(train),
        "participants_per_round": [len(r.participants) for r in train],
        "dropouts_per_round": [len(r.dropouts) for r in train],
        "registered": report.registered,
        "metrics": {"mae": final.mae, "rmse": final.rmse, "nrmse": final.nrmse},
        "model_hash": final.model_hash,
        "ledger": ledger.summary(),
        "secagg": secagg_summary(cfg, report),
        # The settings the aggregator ran with: a continued session keeps its ledger's.
        "dp": dp_summary(agg.config.dp, report),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from gridsim.transport.broker import CONFIG_TEMPLATE, raise_open_file_limit

    exe = shutil.which("mosquitto")
    if exe is None:
        raise GridsimError("mosquitto is not installed (apt-get install mosquitto)")
    raise_open_file_limit()
    config = str(args.config or CONFIG_TEMPLATE)
    os.execv(exe, [exe, "-c", config])
    return 1  # not reached


def _cmd_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"gridsim.bench.{args.bench}")
    result = module.run(args)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from gridsim.analyze import main as analyze_main

    try:
        return analyze_main(args)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _cmd_audit(args: argparse.Namespace) -> int:
    from gridsim.ledger.audit import run as run_audit

    return run_audit(args)


COMMANDS = {
    "run": _cmd_run,
    "audit": _cmd_audit,
    "analyze": _cmd_analyze,
    "meters": _cmd_meters,
    "aggregator": _cmd_aggregator,
    "broker": _cmd_broker,
    "bench": _cmd_bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Building the parser imports the benchmarks, and with them torch: Ctrl-C in
        # that second or two ends the command as quietly as Ctrl-C in a run.
        args = build_parser().parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("gridsim.transport.mqtt").setLevel(logging.WARNING)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("gridsim: interrupted", file=sys.stderr)
        return 130
    except GridsimError as exc:
        print(f"gridsim: error: {exc}", file=sys.stderr)
        return 1
