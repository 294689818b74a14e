"""Privacy-utility analysis: forecast error against epsilon, per DP mode.

``python -m gridsim analyze OUT...`` tabulates finished runs (their
``summary.json``): mode, epsilon spent, test error, baselines, time.

``python -m gridsim analyze`` (no runs) trains the federated forecaster at each budget
in ``--epsilons`` (``inf``: no DP) for each mode in ``--modes`` and prints one
JSON document with the test error of each, plus a table on stderr.

Each point is calibrated exactly as a run calibrates it
(:func:`gridsim.privacy.settings.resolve_dp`: the same accountants, the same
planned noise shares and bits) and trains with the same components: batched
local training, per-meter clipping, and for ``central`` exact Gaussian noise on
the sum, for ``distributed`` every meter's DDGauss encoding (rotation,
conditional rounding, discrete Gaussian noise share, modulo ``2**bits``)
summed modulo ``2**bits`` and decoded. The one thing left out is the masking
and the MQTT transport: secure aggregation's unmasked sum equals the modular
sum of the encodings bit for bit (``run --verify`` checks it in the test
suite), so it cannot change the numbers, only the time. ``--system`` runs
each point as a full run over MQTT instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gridsim.config import RunConfig

DEFAULT_EPSILONS = "0.5,1,2,4,8,inf"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument(
        "runs",
        nargs="*",
        type=Path,
        help="output folders of finished runs to tabulate (none: run the epsilon sweep)",
    )
    p.add_argument("--meters", type=int, default=d.meters, help="meters in each run")
    p.add_argument("--rounds", type=int, default=d.rounds, help="training rounds per run")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of data and model")
    p.add_argument(
        "--epsilons", default=DEFAULT_EPSILONS, help="comma-separated budgets; inf is no DP"
    )
    p.add_argument("--modes", default="central,distributed", help="comma-separated DP modes")
    p.add_argument("--delta", type=float, default=d.delta, help="DP delta of every point")
    p.add_argument("--clip-norm", type=float, default=d.clip_norm, help="L2 clip of updates")
    p.add_argument("--dp-bits", type=int, default=d.dp_bits, help="DDGauss modulus bits")
    p.add_argument("--repeats", type=int, default=2, help="runs per point (fresh noise each)")
    p.add_argument("--days", type=int, default=d.days, help="days of load per meter")
    p.add_argument("--test-days", type=int, default=d.test_days, help="held-out days")
    p.add_argument("--system", action="store_true", help="run every point as a full run over MQTT")
    p.add_argument("--out", help="also write the JSON document here")
    p.add_argument("--html", help="also write a Plotly figure (error against epsilon) here")


def _parse_epsilons(text: str) -> list[float]:
    values = []
    for item in text.split(","):
        item = item.strip().lower()
        value = math.inf if item in ("inf", "none", "off") else float(item)
        if not value > 0:
            raise ValueError(f"epsilon must be positive or inf, got {item!r}")
        values.append(value)
    return values


def simulate(cfg: RunConfig, *, repeat: int = 0) -> dict[str, Any]:
    """Train ``cfg.rounds`` DP rounds in process; return the final test metrics and DP."""
    from gridsim.learning.batched import BatchedTrainer
    from gridsim.learning.metrics import EvalTotals
    from gridsim.learning.model import initial_parameters
    from gridsim.meter.training_pool import privatize
    from gridsim.privacy.ddgauss import rotation_signs
    from gridsim.privacy.discrete_gaussian import gaussian_noise
    from gridsim.run import dp_settings, meter_windows, train_plan

    model = initial_parameters(cfg.seed)
    dim = int(model.shape[0])
    dp = dp_settings(cfg, dim)
    plan = train_plan(cfg, dp)
    data = meter_windows(list(range(cfg.meters)), cfg)
    trainer = BatchedTrainer(plan)
    codec = dp.codec(dim) if dp is not None and dp.mode == "distributed" else None
    session = f"analyze-{cfg.seed}-{repeat}"
    rng = np.random.default_rng([cfg.seed, repeat])
    started = time.perf_counter()
    for r in range(cfg.rounds):
        result = trainer.train(model, data, seed=cfg.seed, round_=r)
        delta = privatize(result.delta, plan)
        if dp is None:
            # Plain FedAvg, weighted by samples, as a run without DP aggregates.
            weights = result.n_samples.astype(np.float64)
            mean: npt.NDArray[np.float64] = (delta.astype(np.float64) * weights[:, None]).sum(
                axis=0
            ) / weights.sum()
        elif codec is not None:
            signs = rotation_signs(session, r, codec.padded)
            encoded = codec.encode(delta, signs, rng=rng).values
            # What SecAgg+ unmasks: the words' sum (decode reduces it mod 2**bits).
            mean = codec.decode(encoded.sum(axis=0, dtype=np.uint64), signs) / cfg.meters
        else:
            total_sum = delta.astype(np.float64).sum(axis=0)
            if dp.mode == "central":
                total_sum += gaussian_noise(dp.sigma, dim)
            mean = total_sum / cfg.meters  # local: the noise is already in each delta
        model = (model.astype(np.float64) + mean).astype(np.float32)
    totals = EvalTotals()
    for e in trainer.evaluate(model, data):
        totals = totals.add(e)
    metrics = totals.metrics()
    assert metrics is not None
    return {
        "rmse": metrics["rmse"],
        "mae": metrics["mae"],
        "naive_rmse": metrics.get("naive_rmse"),
        "epsilon": dp.epsilon_after(cfg.rounds) if dp else math.inf,
        "noise_multiplier": dp.noise_multiplier if dp else 0.0,
        "train_s": time.perf_counter() - started,
    }


def _system(cfg: RunConfig) -> dict[str, Any]:
    from gridsim.run import run

    with tempfile.TemporaryDirectory(prefix="gridsim-analyze-") as tmp:
        summary = run(dataclasses.replace(cfg, out=tmp, centralized_baseline=False))
    dp = summary["dp"]
    return {
        "rmse": summary["metrics"]["rmse"],
        "mae": summary["metrics"]["mae"],
        "naive_rmse": summary["baselines"]["seasonal_naive"]["rmse"],
        "epsilon": dp.get("epsilon", math.inf) if dp["mode"] != "off" else math.inf,
        "noise_multiplier": dp.get("noise_multiplier", 0.0),
        "train_s": summary["wall_s"],
    }


def analyze(args: argparse.Namespace) -> dict[str, Any]:
    epsilons = _parse_epsilons(args.epsilons)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("central", "local", "distributed"):
            raise ValueError(f"unknown DP mode {m!r}")
    base = RunConfig(
        meters=args.meters,
        rounds=args.rounds,
        seed=args.seed,
        days=args.days,
        test_days=args.test_days,
        delta=args.delta,
        clip_norm=args.clip_norm,
        dp_bits=args.dp_bits,
        secagg=True,
    ).validate()
    points: list[dict[str, Any]] = []
    no_dp: dict[str, Any] | None = None
    for eps in epsilons:
        for mode in modes if math.isfinite(eps) else ["off"]:
            if mode == "off" and no_dp is not None:
                continue
            cfg = dataclasses.replace(base, dp=mode, epsilon=eps if math.isfinite(eps) else None)
            runs = [
                _system(dataclasses.replace(cfg, seed=args.seed + i))
                if args.system
                else simulate(cfg, repeat=i)
                for i in range(args.repeats)
            ]
            rmses = [r["rmse"] for r in runs]
            point = {
                "mode": mode,
                "epsilon_budget": eps if math.isfinite(eps) else None,
                "epsilon_spent": max(r["epsilon"] for r in runs) if mode != "off" else None,
                "noise_multiplier": runs[0]["noise_multiplier"],
                "rmse_median": statistics.median(rmses),
                "rmse": rmses,
                "mae_median": statistics.median(r["mae"] for r in runs),
                "naive_rmse": runs[0]["naive_rmse"],
                "seconds_per_run": statistics.median(r["train_s"] for r in runs),
            }
            if mode == "off":
                no_dp = point
            points.append(point)
            print(
                f"{mode:>11}  eps {('inf' if not math.isfinite(eps) else f'{eps:g}'):>4}  "
                f"z {point['noise_multiplier']:7.3f}  RMSE {point['rmse_median']:.4f} kW",
                file=sys.stderr,
            )
    return {
        "analysis": "privacy-utility",
        "engine": "system" if args.system else "in-process",
        "meters": args.meters,
        "rounds": args.rounds,
        "delta": args.delta,
        "clip_norm": args.clip_norm,
        "dp_bits": args.dp_bits,
        "repeats": args.repeats,
        "seed": args.seed,
        "metric": "test RMSE (kW) of the final global model, median over repeats",
        "points": points,
    }


def from_runs(paths: list[Path]) -> dict[str, Any]:
    """One point per finished run, from its ``summary.json``."""
    points = []
    for path in paths:
        file = path / "summary.json" if path.is_dir() else path
        try:
            summary = json.loads(file.read_text())
            dp = summary.get("dp", {"mode": "off"})
            central = (summary.get("baselines") or {}).get("centralized") or {}
            points.append(
                {
                    "run": str(path),
                    "mode": dp.get("mode", "off"),
                    "epsilon_budget": dp.get("budget"),
                    "epsilon_spent": dp.get("epsilon"),
                    "noise_multiplier": dp.get("noise_multiplier", 0.0),
                    "meters": summary["meters"],
                    "rounds": summary["rounds_completed"],
                    "rmse_median": summary["metrics"]["rmse"],
                    "rmse": [summary["metrics"]["rmse"]],
                    "mae_median": summary["metrics"]["mae"],
                    "naive_rmse": summary["baselines"]["seasonal_naive"]["rmse"],
                    "centralized_rmse": central.get("rmse"),
                    "secagg": bool(summary.get("secagg", {}).get("enabled")),
                    "wall_s": summary.get("wall_s"),
                }
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{file} is not a run summary: {exc}") from None
    return {
        "analysis": "privacy-utility",
        "engine": "runs",
        "metric": "test RMSE (kW) of the final global model",
        "points": points,
    }


def figure_html(doc: dict[str, Any]) -> str:
    """A Plotly figure of error against epsilon, one line per mode (no DP dashed)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    modes = sorted({p["mode"] for p in doc["points"]} - {"off"})
    for mode in modes:
        pts = sorted(
            (p for p in doc["points"] if p["mode"] == mode and p["epsilon_spent"] is not None),
            key=lambda p: p["epsilon_spent"],
        )
        fig.add_trace(
            go.Scatter(
                x=[p["epsilon_spent"] for p in pts],
                y=[p["rmse_median"] for p in pts],
                mode="lines+markers",
                name=mode,
            )
        )
    for p in doc["points"]:
        if p["mode"] == "off":
            fig.add_hline(y=p["rmse_median"], line_dash="dash", annotation_text="no DP")
    naive = [p["naive_rmse"] for p in doc["points"] if p.get("naive_rmse")]
    if naive:
        fig.add_hline(y=naive[0], line_dash="dot", annotation_text="seasonal naive")
    fig.update_layout(
        title="Forecast error against the privacy budget",
        xaxis_title="epsilon spent (delta 1e-5)",
        yaxis_title="test RMSE (kW)",
        xaxis_type="log",
        template="plotly_white",
    )
    # Self-contained (plotly.js inlined): it opens offline.
    return str(fig.to_html(include_plotlyjs=True, full_html=True))


def main(args: argparse.Namespace) -> int:
    result = from_runs(args.runs) if args.runs else analyze(args)
    text = json.dumps(result, indent=2, default=lambda v: None)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.html:
        Path(args.html).write_text(figure_html(result))
    print(text)
    return 0
