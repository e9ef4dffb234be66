"""Search spaces: validation with errors that name the file and the key, and sampling."""

from __future__ import annotations

import optuna
import pytest

from automl_ft.data import IMAGE, TEXT
from automl_ft.errors import BackboneError, SearchSpaceError
from automl_ft.search.space import count_blocks, default_space_path, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("task", [TEXT, IMAGE])
def test_default_spaces_load_and_sample(task):
    space = load_space(None, task)
    assert space.file == str(default_space_path(task))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        cfg = space.suggest(trial, num_classes=4, seed=0)
        seen.add(cfg.adaptation)
        bb = space.backbones[cfg.backbone]
        assert bb.freeze_depth.low <= cfg.freeze_depth <= bb.freeze_depth.high
        if cfg.adaptation == "lora":
            assert cfg.lora_rank in (8, 16, 32) and "lora.rank" in trial.params and "full.lr" not in trial.params
        else:
            assert cfg.lora_rank is None and "lora.rank" not in trial.params and "full.lr" in trial.params
        study.tell(trial, 0.5)
    assert seen == {"full", "lora"}


@pytest.mark.parametrize("task", [TEXT, IMAGE])
def test_first_trial_is_inside_the_space(task):
    space = load_space(None, task)
    params = space.first_trial_params()
    assert params
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    trial = study.ask()
    cfg = space.suggest(trial, num_classes=3, seed=0)
    for key, value in params.items():
        assert trial.params[key] == value, key
    assert cfg.adaptation == space.first_trial["adaptation"]


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


BASE = """
task: text-classification
backbones:
  minilm-l6: {max_length: 64, freeze_depth: {low: 0, high: N}}
adaptation:
  full: {lr: 1.0e-4}
"""


@pytest.mark.parametrize("text,match", [
    ("task: [unclosed", r"invalid YAML \(line 1"),
    ("", "the file is empty"),
    ("- a\n- b\n", "top level must be a mapping"),
    (BASE + "bogus: 1\n", "bogus: unknown key"),
    (BASE + "training: {epochs: {low: 5, high: 2}}\n", "training.epochs: low 5 is above high 2"),
    (BASE + "training: {lr: 0.1}\n", "training.lr: unknown key"),
    (BASE + "training: {batch_size: [16, 0]}\n", "training.batch_size: value 0 is below the minimum 1"),
    (BASE + "training: {weight_decay: {low: 0, high: 0.1, log: true}}\n", "log range needs low > 0"),
    (BASE + "training: {dropout: {choices: []}}\n", "choices must be a non-empty list"),
    (BASE + "pruner: {type: magic}\n", "pruner.type: must be one of"),
    (BASE.replace("task: text-classification", "task: speech"), "task: must be one of"),
    (BASE.replace("full: {lr: 1.0e-4}", "full: {}"), r"adaptation.full.lr: is required"),
    (BASE.replace("full:", "prefix:"), "adaptation.prefix: unknown adaptation"),
    (BASE.replace("high: N}", "high: M}"), "'M': use an integer, N"),
    (BASE.replace("minilm-l6:", "no-such-model-xyz:"), "backbones.no-such-model-xyz: unknown backbone"),
    (BASE.replace("max_length: 64", "image_size: 64"), "image_size/augment apply to image backbones only"),
    (BASE.replace("max_length: 64", "max_length: 64, options: {trust_remote_code: true}"),
     "trust_remote_code: runs the model's own code; allow it on the command line with --trust-remote-code"),
])
def test_malformed_spaces_name_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SearchSpaceError, match=match) as err:
        load_space(path, TEXT)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_space_for_the_other_task(tmp_path):
    with pytest.raises(SearchSpaceError, match="space is for text-classification but the data is image"):
        load_space(write(tmp_path, BASE), IMAGE)


def test_missing_space_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="no such search-space file"):
        load_space(tmp_path / "nope.yaml", TEXT)


def test_block_count_resolves_n(tmp_path):
    space = load_space(write(tmp_path, BASE), TEXT)
    assert space.backbones["minilm-l6"].freeze_depth.high == 6
    space = load_space(write(tmp_path, BASE.replace("high: N}", "high: N-2}")), TEXT)
    assert space.backbones["minilm-l6"].freeze_depth.high == 4
    space = load_space(write(tmp_path, BASE.replace("high: N}", "high: 99}")), TEXT)
    assert space.backbones["minilm-l6"].freeze_depth.high == 6  # clamped to the block count


def test_cli_backbones_override_and_defaults(tmp_path, tiny_bert_dir):
    text = BASE + "backbone_defaults: {max_length: 32, freeze_depth: {low: 0, high: N}}\n"
    space = load_space(write(tmp_path, text), TEXT, backbones=[str(tiny_bert_dir)])
    assert list(space.backbones) == [str(tiny_bert_dir)]
    assert space.backbones[str(tiny_bert_dir)].freeze_depth.high == 2  # from the local config.json
    with pytest.raises(BackboneError, match="unknown backbone 'not-a-backbone'"):
        load_space(write(tmp_path, text), TEXT, backbones=["not-a-backbone"])
    with pytest.raises(BackboneError, match="is for image-classification"):
        load_space(write(tmp_path, text), TEXT, backbones=["efficientnet-lite0"])


def test_count_blocks_of_timm_models_without_weights():
    assert count_blocks("efficientnet-lite0") == 16
    assert count_blocks("timm:test_vit") == 6
    assert count_blocks("resnet18") == 8


def test_trust_remote_code_only_from_the_command_line(tmp_path):
    text = BASE.replace("max_length: 64", "max_length: 64, options: {trust_remote_code: true}")
    space = load_space(write(tmp_path, text), TEXT, trust_remote_code=True)
    assert space.backbones["minilm-l6"].options == {"trust_remote_code": True}
    assert load_space(write(tmp_path, BASE), TEXT).backbones["minilm-l6"].options == {}
