"""Small data: when cross-validation applies, how folds are made, the schedule stretched to enough steps."""

from __future__ import annotations

import numpy as np
import pytest

from automl_ft.config import TrialConfig
from automl_ft.data import LabeledData, Split
from automl_ft.search.crossval import SMALL_VAL, fold_data, plan_for, pooled, refit_epochs
from automl_ft.search.schedule import MIN_STEPS, fit_to_data


def _data(per_class: int, val_per_class: int, classes: int = 2, task: str = "text-classification") -> LabeledData:
    names = [f"c{i}" for i in range(classes)]
    train = Split([f"t{c}-{i}" for c in range(classes) for i in range(per_class)],
                  [c for c in range(classes) for _ in range(per_class)])
    val = Split([f"v{c}-{i}" for c in range(classes) for i in range(val_per_class)],
                [c for c in range(classes) for _ in range(val_per_class)])
    return LabeledData(task, names, train, val, Split(), "x", {}, "fp")


def test_tiny_data_is_cross_validated_with_repeats_and_every_class_in_every_fold():
    data = _data(7, 1)  # 16 examples, 8 per class
    plan = plan_for(data)
    assert plan is not None and plan.repeats == 3 and plan.folds == 3
    folds = fold_data(data, plan)
    assert len(folds) == plan.fits == 9
    for fold in folds:
        assert set(fold.val.labels) == {0, 1}  # stratified: each class in each fold's validation
        assert not set(fold.val.inputs) & set(fold.train.inputs)
        assert len(fold.train) + len(fold.val) == 16
        assert fold.fitted_task() is data.fitted_task()  # one codec and primary metric for all folds
    # one repeat's folds cover every example once as validation
    seen = [x for fold in folds[:3] for x in fold.val.inputs]
    assert sorted(seen) == sorted(data.train.inputs + data.val.inputs)
    # the repeats draw different folds
    assert folds[0].val.inputs != folds[3].val.inputs


def test_large_validation_and_classes_need_no_cross_validation():
    assert plan_for(_data(500, SMALL_VAL // 2 + 1)) is None
    rare = plan_for(_data(20, 25, classes=4))  # val 100 examples, but each class has 45 labelled in all
    assert rare is not None and rare.reason == "rarest class has 45 < 50 examples" and rare.folds == 5
    assert plan_for(_data(30, 10)).reason.startswith("validation split of 20")


def test_regression_and_multilabel_folds():
    reg = LabeledData("text-regression", [], Split([f"t{i}" for i in range(40)], list(np.linspace(0, 1, 40))),
                      Split([f"v{i}" for i in range(5)], [0.1, 0.3, 0.5, 0.7, 0.9]), Split(), "x", {}, "fp")
    plan = plan_for(reg)
    assert plan is not None and plan.folds == 5 and plan.repeats == 3
    assert all(len(f.val) in (9, 9) for f in fold_data(reg, plan))
    ml = LabeledData("text-multilabel", ["a", "b"], Split([f"t{i}" for i in range(30)],
                                                          [[0], [1], [0, 1], []] * 7 + [[0]] * 2),
                     Split([f"v{i}" for i in range(4)], [[0], [1], [0, 1], []]), Split(), "x", {}, "fp")
    folds = fold_data(ml, plan_for(ml))
    assert all(any(0 in y for y in f.val.labels) and any(1 in y for y in f.val.labels) for f in folds)


def test_pooled_trains_on_every_labelled_example():
    data = _data(7, 1)
    everything = pooled(data)
    assert len(everything.train) == 16 and everything.val.inputs == data.val.inputs
    assert everything.fitted_task() is data.fitted_task()


def test_refit_epochs_is_the_folds_median_rounded_up():
    assert refit_epochs([2, 3, 9]) == 3 and refit_epochs([2, 3]) == 3 and refit_epochs([]) == 1


@pytest.mark.parametrize("n, want_batch", [(10, 4), (16, 4), (60, 15)])
def test_tiny_data_gets_enough_steps(n, want_batch):
    config = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, batch_size=32, epochs=3,
                         patience=2, max_length=64)
    out = fit_to_data(config, n)
    assert out.batch_size == want_batch
    assert -(-n // out.batch_size) * out.epochs >= MIN_STEPS
    assert out.patience >= out.epochs // 4


def test_ordinary_data_and_the_probe_keep_their_schedule():
    config = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, batch_size=32, epochs=3,
                         max_length=64)
    assert fit_to_data(config, 5000) == config
    probe = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, adaptation="probe",
                        max_length=64)
    assert fit_to_data(probe, 10) == probe


@pytest.mark.parametrize("kind", ["hyperband", "successive_halving", "median"])
def test_a_cross_validated_trial_is_pruned_only_after_a_whole_k_fold_pass(kind):
    """Steps are folds: a trial far below the others on its first folds (5 validation examples each) is left to
    finish one pass over the data; after it, the median pruner stops it."""
    import optuna

    from automl_ft.search.crossval import CVPlan
    from automl_ft.search.space import load_space
    from automl_ft.search.study import make_pruner

    space = load_space(None, "text-classification")
    space.pruner = {"type": kind, "min_resource": 1, "n_startup_trials": 1}
    plan = CVPlan(folds=3, repeats=3, seed=0, examples=16, reason="test")
    study = optuna.create_study(direction="maximize", pruner=make_pruner(space, baseline=0.5, cv=plan))
    for _ in range(3):
        good = study.ask()
        for step in range(1, plan.fits + 1):
            good.report(1.0, step)
        study.tell(good, 1.0)
    weak = study.ask()
    for step in range(1, plan.folds):
        weak.report(0.1, step)
        assert not weak.should_prune(), f"{kind} pruned at fold {step} of a {plan.folds}-fold pass"
    weak.report(0.1, plan.folds)
    if kind == "median":
        assert weak.should_prune()


def test_the_refit_takes_enough_steps_whatever_the_folds_best_epoch():
    from automl_ft.search.crossval import refit_schedule

    lpft = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, max_length=32,
                       batch_size=4, epochs=14)
    # 16 examples at batch 4: 4 steps an epoch, so 10 epochs make the 40 steps; never above the trial's own 14
    assert refit_schedule(lpft, 4, 16) == 10
    assert refit_schedule(lpft, 12, 16) == 12
    assert refit_schedule(lpft, 2, 4) == 14
    assert refit_schedule(lpft, 3, 4000) == 3  # ordinary data: the folds' median as it is
    assert refit_schedule(TrialConfig(**{**lpft.to_dict(), "adaptation": "probe"}), 4, 16) == 1


def test_a_fold_cut_short_by_the_timeout_does_not_score_the_trial(tmp_path):
    """--timeout stopping a fold after 1 of its epochs: the trial is scored by the folds that finished (and pruned
    when none did), never by the cut fold's half-trained score."""
    import optuna

    from automl_ft.search.crossval import CVPlan
    from automl_ft.search.objective import Objective
    from automl_ft.search.space import load_space
    from automl_ft.train import TrainOutcome

    data = _data(10, 2)
    plan = CVPlan(folds=3, repeats=1, seed=0, examples=24, reason="test")
    objective = Objective(load_space(None, "text-classification"), data, trial_dir=lambda n: tmp_path / str(n),
                          device=None, seed=0, cv=plan)
    config = TrialConfig(task="text-classification", backbone="minilm-l6", num_classes=2, max_length=32, epochs=4)

    def run(cut_at: int):
        calls = []

        def fake_fit(trial, config, workdir, *args, **kwargs):
            calls.append(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            for name in ("model.safetensors", "config.json"):
                (workdir / name).write_text("x")
            if len(calls) == cut_at:
                return TrainOutcome(0.1, 1, 1, "deadline", [], 1.0, 3, {})
            return TrainOutcome(0.9, 3, 4, "completed", [], 1.0, 12, {})

        objective._fit_with_oom_retry = fake_fit
        trial = optuna.create_study(direction="maximize").ask()
        return trial, objective._cross_validate(trial, config, tmp_path / f"cut{cut_at}", lambda *a, **k: None), calls

    trial, out, calls = run(cut_at=3)
    assert out.best_value == pytest.approx(0.9) and out.stopped == "deadline: 2 of 3 folds"
    assert trial.user_attrs["cv"]["folds_done"] == 2 and len(out.history) == 2
    _, out, calls = run(cut_at=99)
    assert out.stopped == "completed" and len(calls) == 3
    with pytest.raises(optuna.TrialPruned):
        trial, *_ = run(cut_at=1)
