"""The ``experiments`` package without a model: the script entry point and the RESULTS.md writer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_script_runs_from_anywhere_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = ROOT / "experiments" / "reproduce.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--smoke" in proc.stdout and "Reproduce BeLLM's claims" in proc.stdout


FIXTURE = ROOT / "tests" / "data" / "reproduce_run"
EXPECTED = ROOT / "tests" / "data" / "reproduce_results"
# stage files removed from the fixture for each case: a full run, a partial one, one before the turning point
CASES = {
    "full": [],
    "partial": ["eval-bellm-k28-seed43", "untrained-bellm-k28", "plan"],
    "early": ["turning_point"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_results_md_is_the_same_as_before_the_split(case, tmp_path, monkeypatch):
    """The RESULTS.md writer on a fixed run directory (a smoke run's stages, completed with synthetic scores;
    paths relative to ``run/``) gives byte for byte what the single-file script wrote before the package split
    (``tests/data/reproduce_results``); versions and the bootstrap are fixed, the latter needs the caches."""
    from experiments import report
    from experiments.settings import Settings
    from experiments.stages import Run

    shutil.copytree(FIXTURE, tmp_path / "run")
    for name in CASES[case]:
        (tmp_path / "run" / "stages" / f"{name}.json").unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "_versions", lambda: {"python": "3.x", "torch": "x"})
    monkeypatch.setattr(report, "REPO", tmp_path.resolve())  # the report at the root: links as written
    boot = {
        "n_boot": 1000,
        "lo": -0.21,
        "hi": 0.43,
        "share_le_0": 0.25,
        "seeds": [42, 43],
        "pairs_per_task": 4,
    }
    monkeypatch.setattr(report, "pair_bootstrap", lambda run, d, seeds, **kw: dict(boot))
    settings = Settings(**json.loads((tmp_path / "run" / "settings.json").read_text()))
    path = report.write_report(Run(Path("run"), settings, progress=False), tmp_path / "RESULTS.md")
    assert path.read_text(encoding="utf-8") == (EXPECTED / f"RESULTS.{case}.md").read_text(encoding="utf-8")
    if case != "early":
        assert (tmp_path / "results_assets" / "turning_point.png").is_file()


def test_report_links_into_docs_resolve_from_the_report_folder(tmp_path):
    """A report below the repository root climbs to ``docs/``; one outside it names the file as text (no
    relative link reaches the repository from there); image links beside the report stay as they are."""
    from experiments.report import REPO, relink

    text = "([docs/bidirectional.md](docs/bidirectional.md), section 1) ![curve](results_assets/c.png)"
    assert relink(text, REPO) == text
    below = relink(text, REPO / "experiments" / "runs" / "depth-study")
    assert "[docs/bidirectional.md](../../../docs/bidirectional.md)" in below
    assert (REPO / "experiments" / "runs" / "depth-study" / "../../../docs/bidirectional.md").is_file()
    outside = relink(text, tmp_path)
    assert (
        "(`docs/bidirectional.md` of the bellm repository, section 1)" in outside and "](docs/" not in outside
    )
    assert "![curve](results_assets/c.png)" in below and "![curve](results_assets/c.png)" in outside


def _fixture_run(tmp_path, **overrides):
    from experiments.settings import Settings
    from experiments.stages import Run

    shutil.copytree(FIXTURE, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "settings.json").read_text())
    saved["train_data"] = str(tmp_path / saved["train_data"])
    settings = Settings.from_saved({**saved, **overrides})
    return Run(tmp_path / "run", settings, progress=False)


def test_depth_study_grid_order_pairs_each_seed_with_causal(tmp_path):
    """Every (arm, seed) of the depth study once; causal and the upper quarter alternate seed by seed first,
    the middle depth (L//2) is added, every arm has every seed."""
    from experiments.depth_study import depth_study_jobs, grid_order

    run = _fixture_run(tmp_path, depth_study=True)
    d = run.done("turning_point")["design"]
    order = [(a["name"], s) for a, s in grid_order(run, d)]
    names = {a["name"] for a in run.arms(d)}
    assert names == {
        "causal",
        "bellm-k28",
        "bidir-k23",
        "bidir-k15",
        "all-bidirectional",
        "last-layer-mean",
        "causal-mean",
    }
    assert sorted(order) == sorted((n, s) for n in names for s in (42, 43))
    assert order[:4] == [("causal", 42), ("bidir-k23", 42), ("causal", 43), ("bidir-k23", 43)]
    assert order.index(("causal-mean", 42)) < order.index(("last-layer-mean", 42))
    jobs = [n for n, _ in depth_study_jobs(run, d)]
    assert "sweep" not in jobs  # the fixture's turning-point stage holds the sweep already
    assert jobs[-1] == "best-depth" and not any(n.startswith(("train-long", "fullpairs-")) for n in jobs)
    planned = [n for n, _ in depth_study_jobs(run, d, for_estimate=True)]
    assert "train-long4x-bidir-best-seed42" in planned and "fullpairs-causal-seed42" in planned
    assert "train-long4x-causal-seed44" not in planned  # --long-seeds 3 of 2 seeds: both
    assert len(set(planned)) == len(planned)


def test_settings_of_an_older_run_and_the_depth_study_extension(tmp_path):
    from experiments.settings import ReproduceError

    run = _fixture_run(tmp_path)
    saved = json.loads((run.out / "settings.json").read_text())
    saved["train_data"] = run.settings.train_data
    (run.out / "settings.json").write_text(
        json.dumps(saved)
    )  # no depth-study keys: written before they existed
    run.check_settings()  # the missing keys take their defaults
    run.settings.depth_study = True
    run.check_settings()  # a standard run extends into the depth study
    assert json.loads((run.out / "settings.json").read_text())["depth_study"] is True
    run.settings.depth_study = False
    with pytest.raises(ReproduceError, match="depth_study: saved True, now False"):
        run.check_settings()


def test_paired_comparison_and_verdict(tmp_path):
    from bellm.sts_data import TASKS
    from experiments.stats import paired_comparison, verdict

    run = _fixture_run(tmp_path)
    c = paired_comparison(run, "bellm-k28", "causal", [42, 43, 44])  # 44 was never run: left out
    assert c["seeds"] == [42, 43]
    expected = [
        run.done(f"eval-bellm-k28-seed{s}")["average"] - run.done(f"eval-causal-seed{s}")["average"]
        for s in (42, 43)
    ]
    assert c["deltas"] == pytest.approx(expected) and c["mean"] == pytest.approx(sum(expected) / 2)
    assert c["se"] == pytest.approx(abs(expected[0] - expected[1]) / 2)
    assert c["ahead"] == sum(x > 0 for x in expected)
    task = TASKS[0]
    per = [
        run.done(f"eval-bellm-k28-seed{s}")["scores"][task] - run.done(f"eval-causal-seed{s}")["scores"][task]
        for s in (42, 43)
    ]
    assert c["per_set"][task]["mean"] == pytest.approx(sum(per) / 2)
    assert c["bootstrap"] is None  # the fixture has neither caches nor pair cosines: no interval claimed
    assert verdict(c) == "undecided"
    three = {"deltas": [1.0, 1.2, 0.9], "t_interval": (0.5, 1.6), "bootstrap": {"lo": 0.2, "hi": 1.9}}
    assert verdict(three) == "helps"
    assert verdict({**three, "bootstrap": {"lo": -0.1, "hi": 1.9}}) == "indistinguishable"
    assert verdict({**three, "t_interval": (-1.6, -0.5), "bootstrap": {"lo": -1.9, "hi": -0.2}}) == "hurts"


def test_a_run_refuses_other_input_files(tmp_path):
    """``inputs.json`` records the sha256 of the model, triplets and STS files; other files are refused."""
    from experiments.settings import ReproduceError

    run = _fixture_run(tmp_path)
    try:
        run.check_inputs()
    except FileNotFoundError:
        pytest.skip("the real SmolLM2 GGUF or the STS data not found")
    run.check_inputs()  # the same files: accepted
    saved = json.loads((run.out / "inputs.json").read_text())
    assert (
        set(saved) == {"model", "train_data", "sts", "device"}
        and "snli_devtest_triplets.tsv.gz" in saved["train_data"]
    )
    name = sorted(saved["sts"])[0]
    saved["sts"][name] = "0" * 64
    (run.out / "inputs.json").write_text(json.dumps(saved))
    with pytest.raises(ReproduceError, match=f"sts: {name} differ"):
        run.check_inputs()
    saved["sts"][name] = run.input_identity()["sts"][name]
    saved["device"] = {"type": "cuda" if saved["device"]["type"] == "cpu" else "cpu"}
    (run.out / "inputs.json").write_text(json.dumps(saved))
    with pytest.raises(ReproduceError, match="device: type differ"):
        run.check_inputs()
    del saved["device"]  # a record from before the device type was recorded: it is added, not refused
    (run.out / "inputs.json").write_text(json.dumps(saved))
    run.check_inputs()
    assert "device" in json.loads((run.out / "inputs.json").read_text())


def _write_eval(run, name: str, cosines: dict, gold: dict, **extra) -> None:
    """An evaluation stage JSON whose scores are the Spearman x 100 of its own pair cosines."""
    from scipy.stats import spearmanr

    from bellm._io import atomic_write_json

    scores = {t: float(spearmanr(cosines[t], gold[t]).statistic * 100) for t in cosines}
    result = {
        "scores": scores,
        "average": sum(scores.values()) / len(scores),
        "pairs": {t: len(v) for t, v in cosines.items()},
        "pair_cosines": {t: [float(x) for x in v] for t, v in cosines.items()},
        **extra,
    }
    atomic_write_json(run.out / "stages" / f"{name}.json", result)


def test_depth_study_report_from_synthetic_stages(tmp_path, monkeypatch):
    """The depth study's sections on a run whose stage JSONs are synthetic (no model): an arm whose cosines
    rank the pairs exactly like the gold scores *helps*, one with causal's cosines is *indistinguishable*, one
    ranking them backwards *hurts*; Δ(k), the longer budget and the full-protocol check are drawn from their
    stages, and nothing that did not run is shown."""
    import numpy as np

    from bellm.sts_data import TASKS, load_sts
    from experiments import report
    from experiments.depth_study import depth_arms

    seeds = [42, 43, 44]
    run = _fixture_run(tmp_path, depth_study=True, seeds=seeds, eval_max_pairs=40, full_max_pairs=None)
    try:
        gold = {t: np.asarray(load_sts(t, "test").sample(40, 0).scores) for t in TASKS}
        full_gold = {t: np.asarray(load_sts(t, "test").scores) for t in TASKS}  # every pair
    except FileNotFoundError:
        pytest.skip("the STS data not found")
    d = run.done("turning_point")["design"]
    monkeypatch.chdir(tmp_path)  # the fixture's paths are relative to the folder holding run/

    def noisy(g, seed):
        return g + np.random.default_rng(seed).normal(0, 1.5, len(g))

    effect = {"bidir-k23": "better", "bidir-k15": "same", "all-bidirectional": "worse"}
    for arm in run.arms(d):
        for seed in seeds:
            if arm["name"] in ("causal-mean", "last-layer-mean") and seed != 42:
                continue  # the mean pair with one seed only: undecided
            kind = effect.get(arm["name"], "same")
            cos = {
                t: {"better": gold[t], "same": noisy(gold[t], seed), "worse": -gold[t]}[kind] for t in TASKS
            }
            _write_eval(run, f"eval-{arm['name']}-seed{seed}", cos, gold, arm=arm, seed=seed)
    report.write_report(run, tmp_path / "R.md")
    text = (tmp_path / "R.md").read_text()
    verdicts = ("helps |", "hurts |", "indistinguishable |", "undecided |")
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.endswith(verdicts)}
    assert "| helps |" in rows["bidirectional from k=23 (second depth) − causal"]
    assert "| indistinguishable |" in rows["bidirectional from k=15 (middle of the stack) − causal"]
    assert "| hurts |" in rows["all bidirectional (from_layer=0) − causal"]
    assert "| undecided |" in rows["from_layer=-1 (29), mean pooling − causal, mean pooling (control)"]
    assert (tmp_path / "results_assets" / "delta_vs_k.png").stat().st_size > 1000
    assert "## 6. A longer budget (4x the steps)\n\nNot run yet" in text and "not run |" not in text
    assert "**partial run**" in text
    # best depth, the longer budget and the full-protocol check
    from bellm._io import atomic_write_json

    best = next(a for a in depth_arms(run, d) if a["name"] == "bidir-k23")
    atomic_write_json(run.out / "stages" / "best-depth.json", {"arm": best, "rule": "largest mean", "x": 1})
    for seed in seeds:
        for name, kind in (("long4x-causal", "same"), ("long4x-bidir-k23", "better")):
            cos = {t: noisy(gold[t], seed + 7) if kind == "same" else gold[t] for t in TASKS}
            _write_eval(run, f"eval-{name}-seed{seed}", cos, gold)
    # causal's every-pair cosines hold its sampled ones (the same adapter)
    full_cos = {t: noisy(full_gold[t], 42) for t in TASKS}
    for t in TASKS:
        full_cos[t][load_sts(t, "test").sample_indices(40, 0)] = noisy(gold[t], 42)
    _write_eval(run, "fullpairs-causal-seed42", full_cos, full_gold)
    _write_eval(run, "fullpairs-bidir-k23-seed42", full_gold, full_gold)
    report.write_report(run, tmp_path / "R.md")
    text = (tmp_path / "R.md").read_text()
    assert "| 1x | 1 | 42, 43, 44 |" in text and "| 4x | 4 | 42, 43, 44 |" in text  # the smoke's 1 step
    full_row = (
        "| bidirectional from k=23 (second depth), seed 42 | 100.00 | [100.00, 100.00] | 100.00 | 100.00 | "
        "18850 | yes |"
    )
    assert full_row in text  # the same ranking on the sampled pairs and on every pair
    causal_row = next(
        line for line in text.splitlines() if line.startswith("| causal, seed 42 |") and "18850" in line
    )
    assert causal_row.split(" | ")[1] == causal_row.split(" | ")[3]  # rescored = sampled
    assert "sampled and the every-pair scores" in text
    assert (
        "- Seed 42, bidirectional from k=23 (second depth) − causal: +24.18 on the sampled pairs, +31.11 on every"
        in text
    )
    assert "the sampled pairs give a 7-set average equal to the sampled stage's" in text
    from experiments.stats import subset_average

    assert subset_average(run, "fullpairs-causal-seed42", None, 40) == pytest.approx(
        run.done("eval-causal-seed42")["average"]
    )
    assert subset_average(run, "eval-causal-seed42", 40, 80) is None  # 80 sampled pairs are not among the 40
    assert subset_average(run, "fullpairs-causal-seed42", 40, 40) is None  # its cosines are of other pairs
    # a different adapter for causal's every-pair stage: its sampled pairs no longer score the same
    _write_eval(run, "fullpairs-causal-seed42", {t: noisy(full_gold[t], 7) for t in TASKS}, full_gold)
    report.write_report(run, tmp_path / "R.md")
    text = (tmp_path / "R.md").read_text()
    assert "not the one the sampled score measured" in text and "one adapter" not in text


class _OtherProcess:
    """A separate process that holds a stage's lock (as another worker would) until :meth:`end`."""

    def __init__(self, lock: Path):
        code = (
            "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True);"
            " sys.stdin.readline()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout.readline().strip() == "held"

    def end(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        self.proc.wait(60)


def test_stage_locks_are_exclusive_and_die_with_their_process(tmp_path):
    from experiments.stages import Run

    run = _fixture_run(tmp_path)
    other_run = Run(run.out, run.settings, progress=False)  # another worker (its own open lock file)
    assert run.claim("train-x-seed1")
    assert not other_run.claim("train-x-seed1")
    assert other_run.running_elsewhere() == ["train-x-seed1"] and run.running_elsewhere() == []
    run.release("train-x-seed1")
    assert other_run.claim("train-x-seed1") and not run.claim("train-x-seed1")
    other_run.release("train-x-seed1")

    other = _OtherProcess(run.stages / "train-y-seed1.lock")
    assert not run.claim("train-y-seed1") and run.running_elsewhere() == ["train-y-seed1"]
    other.end(kill=True)  # killed part-way: its lock goes with it
    assert run.running_elsewhere() == [] and run.claim("train-y-seed1")
    run.release("train-y-seed1")


def test_stage_needs():
    from experiments.stages import Run

    order = ["train-a-seed1", "eval-a-seed1", "untrained-a", "train-b-seed1", "eval-b-seed1", "best-depth"]
    run = Run.__new__(Run)
    assert run.needs("eval-a-seed1", order) == ["train-a-seed1"]
    assert run.needs("fullpairs-a-seed1", order) == ["eval-a-seed1"]
    assert run.needs("best-depth", order) == ["eval-a-seed1", "eval-b-seed1"]
    assert run.needs("train-a-seed1", order) == [] and run.needs("untrained-a", order) == []


def _fake_jobs(run, names, calls, seconds=0.0):
    import threading
    import time

    def job(name):
        def fn():
            calls.append((threading.current_thread().name, name))
            time.sleep(seconds)
            return {"name": name}

        return fn

    run.jobs = lambda d, for_estimate=False: [(n, job(n)) for n in names]
    run.estimate = lambda: {"stages": {n: 1.0 for n in names}}  # the real one needs the fixture's model


def test_a_worker_skips_stages_held_elsewhere_and_waits_for_their_inputs(tmp_path):
    """A stage locked by another live process is not run; the evaluation that needs it waits until it is done,
    while the independent stages run meanwhile."""
    import threading
    import time

    run = _fixture_run(tmp_path)
    names = ["train-a-seed1", "eval-a-seed1", "train-b-seed1", "eval-b-seed1"]
    calls = []
    _fake_jobs(run, names, calls)
    other = _OtherProcess(run.stages / "train-a-seed1.lock")
    left = []
    worker = threading.Thread(target=lambda: left.append(run.run_all(poll_s=0.02)), name="w")
    worker.start()
    deadline = time.monotonic() + 60
    while run.done("eval-b-seed1") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert [n for _, n in calls] == ["train-b-seed1", "eval-b-seed1"] and worker.is_alive()
    assert run.running_elsewhere() == ["train-a-seed1"]
    run.stage("train-a-seed1", lambda: {"by": "the other process"})  # the other process finishes it ...
    assert run.running_elsewhere() == []  # ... and is not running it any more, though it still holds the lock
    other.end()
    worker.join(60)
    assert left == [0] and [n for _, n in calls] == ["train-b-seed1", "eval-b-seed1", "eval-a-seed1"]
    assert run.done("train-a-seed1")["by"] == "the other process"
    assert run.done("train-b-seed1")["started_alongside"] == ["train-a-seed1"]
    assert "started_alongside" not in run.done("eval-a-seed1")


def test_two_workers_share_a_run_directory(tmp_path):
    """Two workers on one run directory run every stage exactly once between them, evaluations after their
    trainings, and both find work; the base model, which both need first (its folder is not in the fixture, as
    on a new machine), is made by one while the other waits."""
    import threading

    from experiments.stages import Run

    runs = [_fixture_run(tmp_path)]
    runs.append(Run(runs[0].out, runs[0].settings, progress=False))
    assert not runs[0].resolve(runs[0].done("base")["path"]).exists()
    names = [f"{kind}-arm{i}-seed1" for i in range(4) for kind in ("train", "eval")]
    calls, materialised = [], []
    for run in runs:
        _fake_jobs(run, names, calls, seconds=0.2)
        run._materialise = lambda make=run._materialise: materialised.append(1) or make()
    left = []
    workers = [
        threading.Thread(target=lambda r=r: left.append(r.run_all(poll_s=0.02)), name=f"w{i}")
        for i, r in enumerate(runs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert left == [0, 0]
    ran = [n for _, n in calls]
    assert sorted(ran) == sorted(names)
    assert all(ran.index(f"train-arm{i}-seed1") < ran.index(f"eval-arm{i}-seed1") for i in range(4))
    assert {w for w, _ in calls} == {"w0", "w1"}
    assert runs[0].running_elsewhere() == [] and not runs[0]._held and not runs[1]._held
    assert materialised == [1] and runs[1].resolve(runs[1].done("base")["path"]).is_dir()


def test_stop_after_names_the_next_stage_this_worker_would_run(tmp_path, capsys):
    """Past ``--stop-after`` a worker starts nothing and names the first stage it would have taken: not one
    that another process is running, nor one that waits on it."""
    run = _fixture_run(tmp_path)
    names = ["train-a-seed1", "eval-a-seed1", "train-b-seed1"]
    calls = []
    _fake_jobs(run, names, calls)
    other = _OtherProcess(run.stages / "train-a-seed1.lock")
    try:
        assert run.run_all(stop_after_s=-1.0) == 3 and calls == []
    finally:
        other.end()
    message = capsys.readouterr().out.strip().splitlines()[-1]
    assert message == (
        "stopping before train-b-seed1: --stop-after reached (train-a-seed1 running in another process); "
        "rerun the same command to resume"
    )


def test_identity_difference_in_words():
    """Exactly equal scores read "exactly", a float-noise difference is shown as it is (never "at most 0.0000"),
    and nothing is said before both rows ran."""
    from bellm.sts_data import TASKS
    from experiments.report import identity_difference

    class _Done:
        def __init__(self, stages: dict):
            self.stages = stages

        def done(self, name: str):
            return self.stages.get(name)

    causal = {"scores": {t: 50.0 + i for i, t in enumerate(TASKS)}}
    causal["scores"][TASKS[1]] = None  # undefined on one set: that set is left out
    same = {"untrained-causal": causal, "untrained-identity-last": causal}
    assert identity_difference(_Done(same)) == "gives exactly the causal scores on every set"
    noisy = {"scores": {**causal["scores"], TASKS[0]: 50.0 + 3e-5, TASKS[1]: 12.0}}
    text = identity_difference(_Done({"untrained-causal": causal, "untrained-identity-last": noisy}))
    assert text == "differs from causal by at most 3e-05 points on any set"
    assert identity_difference(_Done({"untrained-causal": causal})) is None
