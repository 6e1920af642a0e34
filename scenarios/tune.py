"""``scenarios tune``: search learning rate, LoRA rank, local steps and compression ratio
with Optuna's TPE sampler, every trial a real federation played by ``run_scenario``.

The study lives in ``DIR/study.db`` (SQLite through Optuna's RDB storage), so an
interrupted tuning run resumes where it stopped: finished trials are kept, and a trial that
was running when the process died is marked failed and its parameters are queued again,
so no point of the search is silently lost.  The objective is the final mean personalized
accuracy (``report["final"]["accuracy"]``), what a device owner actually gets.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, Trial, TrialState

from fedsa_common.federation.config import ConfigError, read_yaml, validate_model
from fedsa_common.net.broker import BrokerProcess
from fedsa_common.process.atomic import write_bytes, write_json
from scenarios.bench import broker_for, scenario_digest, start_bench_broker
from scenarios.config import ScenarioConfig
from scenarios.runner import run_scenario
from scenarios.tune_space import Dimension, apply_params, search_space

log = logging.getLogger("fedsa.scenarios.tune")

STUDY_NAME = "fedsa-tune"
OBJECTIVE = "final mean personalized accuracy (report.final.accuracy), maximized"


class TrialFailed(RuntimeError):
    """A trial whose federation failed or reported no accuracy; the study goes on."""


def suggest(trial: Trial, space: list[Dimension]) -> dict[str, Any]:
    """Ask the sampler for one value per dimension."""
    params: dict[str, Any] = {}
    for d in space:
        if d.kind == "float":
            params[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        elif d.kind == "int":
            params[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high))
        else:
            params[d.name] = trial.suggest_categorical(d.name, list(d.choices))
    return params


def trial_config(raw: dict[str, Any], params: dict[str, Any], number: int) -> ScenarioConfig:
    """The scenario with ``params`` applied and a federation name of its own, so retained
    messages of trials on one broker never mix."""
    data = apply_params(raw, params)
    fed = data.setdefault("federation", {})
    base = ScenarioConfig.model_validate(raw).federation.name
    fed["name"] = f"{base}-t{number}"
    return validate_model(ScenarioConfig, data)


def study_digest(config: ScenarioConfig, space: list[Dimension]) -> str:
    """What a resumed study must share with the one on disk: scenario and search space."""
    blob = json.dumps({"scenario": scenario_digest(config),
                       "space": [d.describe() for d in space]}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One ``scenarios tune`` per DIR: two would run each other's trials twice."""
    with open(out / "tune.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{out}: another scenarios tune is using this directory") from None
        yield


def open_study(out: Path, digest: str, sampler_seed: int) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=sampler_seed))
    found = study.user_attrs.get("digest")
    if found is None:
        study.set_user_attr("digest", digest)
    elif found != digest:
        raise ConfigError(f"{out / 'study.db'} holds a study of another scenario or search "
                          "space; use a fresh --out directory")
    return study


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue again the parameters of trials that were interrupted, once each.

    A trial left RUNNING by a killed process is marked failed first; one stopped by Ctrl-C
    is already failed.  Either has no ``error`` attribute (that is set only when the
    federation itself failed), which tells them apart from a genuine failure.
    """
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
    done = set(study.user_attrs.get("requeued", []))
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if "error" in t.user_attrs or t.number in done:
            continue
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
        numbers.append(t.number)
    if numbers:
        study.set_user_attr("requeued", sorted(done | set(numbers)))
    return numbers


def counted(t: FrozenTrial) -> bool:
    """Trials that count towards --trials: finished ones, including those whose federation
    failed, but not the interrupted ones (re-run) nor queued ones."""
    return t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL
                                              and "error" in t.user_attrs)


def _fmt(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items())


def make_objective(raw: dict[str, Any], space: list[Dimension], out: Path,
                   broker: Callable[[], str], echo: Callable[[str], None]
                   ) -> Callable[[Trial], float]:
    def objective(trial: Trial) -> float:
        params = suggest(trial, space)
        trial_dir = out / "trials" / f"{trial.number:03d}"
        trial.set_user_attr("report", str(trial_dir / "report.json"))
        if trial_dir.exists():
            shutil.rmtree(trial_dir)
        config = trial_config(raw, params, trial.number)
        echo(f"trial {trial.number}: {_fmt(params)}")
        started = time.time()
        try:
            report = run_scenario(config, trial_dir, broker(), echo=lambda _msg: None)
        except (RuntimeError, TimeoutError, OSError, ValueError) as err:
            trial.set_user_attr("error", str(err)[:2000])
            raise TrialFailed(f"trial {trial.number} failed: {err}") from err
        final = report.get("final", {})
        trial.set_user_attr("wall_s", time.time() - started)
        trial.set_user_attr("bytes_up_total", final.get("bytes_up_total"))
        trial.set_user_attr("rounds_completed", final.get("rounds_completed"))
        acc = final.get("accuracy")
        if acc is None:
            trial.set_user_attr("error", "no device reported an accuracy")
            raise TrialFailed(f"trial {trial.number}: no device reported an accuracy")
        echo(f"trial {trial.number}: final accuracy {acc:.3f} "
             f"({final.get('rounds_completed')} rounds, {time.time() - started:.0f}s)")
        return float(acc)

    return objective


def history(study: optuna.Study, scenario_file: str, space: list[Dimension]
            ) -> dict[str, Any]:
    """``history.json``: every trial with its parameters, value, state and report path."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "params": t.params,
            "value": t.value,
            "report": t.user_attrs.get("report"),
            "error": t.user_attrs.get("error"),
            "requeued_from": t.user_attrs.get("requeued_from"),
            "wall_s": t.user_attrs.get("wall_s"),
            "bytes_up_total": t.user_attrs.get("bytes_up_total"),
            "started": t.datetime_start.isoformat() if t.datetime_start else None,
            "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
        })
    best = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params,
                "report": b.user_attrs.get("report")}
    return {"scenario_file": scenario_file, "objective": OBJECTIVE,
            "space": [d.describe() for d in space], "trials": trials, "best": best}


def best_yaml(raw: dict[str, Any], best: dict[str, Any], scenario_file: str, n: int) -> str:
    """The scenario file with the best parameters applied (its federation name kept)."""
    text = yaml.safe_dump(apply_params(raw, best["params"]), sort_keys=False)
    return (f"# best of {n} trial(s) of {scenario_file}: trial {best['number']}, final "
            f"accuracy {best['value']:.4f}\n# params: {_fmt(best['params'])}\n{text}")


def run_tune(file: Path, trials: int, out: Path, broker_url: str | None = None,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run trials until ``trials`` have finished in the study of ``out``; write
    ``history.json`` and (once a trial succeeded) ``best.yaml``; return the history."""
    raw = read_yaml(file)
    config = validate_model(ScenarioConfig, raw)
    space = search_space(config)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started: list[BrokerProcess] = []
    url = broker_for(config, broker_url)

    def broker() -> str:  # started on the first trial that needs it, shared by all
        nonlocal url
        if url is None:
            started.append(start_bench_broker(config, out))
            url = started[0].url
            echo(f"started {started[0].kind} broker at {url} for all trials")
        return url

    with exclusive(out):
        seed = config.tune.sampler_seed if config.tune else 0
        study = open_study(out, study_digest(config, space), seed)
        requeued = requeue_interrupted(study)
        if requeued:
            echo(f"resuming: trial(s) {', '.join(map(str, requeued))} were interrupted and "
                 "run again")
        done = sum(1 for t in study.get_trials(deepcopy=False) if counted(t))
        remaining = max(0, trials - done)
        echo(f"search space: {'; '.join(d.describe() for d in space)}")
        echo(f"{done} trial(s) already finished, running {remaining} more")
        try:
            if remaining:
                study.optimize(make_objective(raw, space, out, broker, echo),
                               n_trials=remaining, catch=(TrialFailed,))
        finally:
            for b in started:
                b.stop()
            result = history(study, str(file), space)
            write_json(out / "history.json", result)
        if result["best"] is not None:
            n = sum(1 for t in study.get_trials(deepcopy=False) if counted(t))
            write_bytes(out / "best.yaml", best_yaml(raw, result["best"], str(file), n).encode())
    return result
