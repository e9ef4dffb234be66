"""Search spaces: validation with errors that name the file and the key, and sampling."""

from __future__ import annotations

import optuna
import pytest

from automl_ft.data import IMAGE, TEXT
from automl_ft.errors import BackboneError, SearchSpaceError
from automl_ft.search.space import count_blocks, default_space_path, load_space
from tests.search.test_study import classifier

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("task", [TEXT, IMAGE])
def test_default_spaces_load_and_sample(task):
    space = load_space(None, task)
    assert space.file == str(default_space_path(task))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        cfg = space.suggest(trial, task, classifier(4), seed=0)
        seen.add(cfg.adaptation)
        bb = space.backbones[cfg.backbone]
        assert bb.freeze_depth.low <= cfg.freeze_depth <= bb.freeze_depth.high
        if cfg.adaptation == "lora":
            assert cfg.lora_rank in (8, 16, 32) and "lora.rank" in trial.params and "full.lr" not in trial.params
        elif cfg.adaptation == "setfit":  # one pass over contrastive pairs, then a closed-form head
            assert cfg.setfit_iterations in (10, 20) and cfg.epochs == 1 and "setfit.lr" in trial.params
            assert cfg.lora_rank is None and "full.lr" not in trial.params
        else:
            assert cfg.lora_rank is None and "lora.rank" not in trial.params and "full.lr" in trial.params
        study.tell(trial, 0.5)
    # text offers SetFit (on up to 1,000 labelled examples: tuning drops it above, SearchSpace.limit_to_data)
    assert seen == ({"full", "lora", "setfit"} if task == TEXT else {"full", "lora"})


@pytest.mark.parametrize("task", [TEXT, IMAGE])
def test_first_trial_is_inside_the_space(task):
    space = load_space(None, task)
    params = space.first_trial_params()
    assert params
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    trial = study.ask()
    cfg = space.suggest(trial, task, classifier(3), seed=0)
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
    (BASE.replace("task: text-classification", "task: speech"), "task: must be a modality"),
    (BASE.replace("full: {lr: 1.0e-4}", "full: {}"), r"adaptation.full.lr: is required"),
    (BASE.replace("full:", "prefix:"), "adaptation.prefix: unknown adaptation"),
    (BASE.replace("high: N}", "high: M}"), "'M': use an integer, N"),
    (BASE.replace("minilm-l6:", "no-such-model-xyz:"), "backbones.no-such-model-xyz: unknown backbone"),
    (BASE.replace("max_length: 64", "image_size: 64"), "image_size applies to image backbones only"),
    (BASE.replace("max_length: 64", "max_length: 64, augment: crop-flip"), r"minilm-l6.augment: .*token-dropout"),
    (BASE.replace("max_length: 64", "max_length: 64, options: {trust_remote_code: true}"),
     "trust_remote_code: runs the model's own code; allow it on the command line with --trust-remote-code"),
])
def test_malformed_spaces_name_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SearchSpaceError, match=match) as err:
        load_space(path, TEXT)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_space_for_the_other_task(tmp_path):
    with pytest.raises(SearchSpaceError, match="space is for text data but the data is image"):
        load_space(write(tmp_path, BASE), IMAGE)


def test_missing_space_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="no such search-space file"):
        load_space(tmp_path / "nope.yaml", TEXT)


def test_block_count_resolves_n(tmp_path):
    space = load_space(write(tmp_path, BASE), TEXT)
    assert space.backbones["minilm-l6"].freeze_depth.high == 6
    space = load_space(write(tmp_path, BASE.replace("high: N}", "high: N-2}")), TEXT)
    assert space.backbones["minilm-l6"].freeze_depth.high == 4
    space = load_space(write(tmp_path, BASE.replace("high: N}", "high: 6}")), TEXT)
    assert space.backbones["minilm-l6"].freeze_depth.high == 6
    space = load_space(write(tmp_path, BASE.replace("high: N}", "high: N-9}")), TEXT)
    assert space.backbones["minilm-l6"].freeze_depth.kind == "fixed"  # N-9 of 6 blocks: nothing frozen
    assert space.backbones["minilm-l6"].freeze_depth.value == 0


@pytest.mark.parametrize("depth", ["{low: 0, high: 99}", "7", "[2, 9]"])
def test_freeze_depth_above_the_block_count_is_an_error(tmp_path, depth):
    """It used to be clamped to the block count without a word (a 0..99 range searched 0..6)."""
    path = write(tmp_path, BASE.replace("{low: 0, high: N}", depth))
    with pytest.raises(SearchSpaceError, match=r"backbones.minilm-l6.freeze_depth: (99|7|9) is above the 6 blocks "
                                               r"of 'minilm-l6'; use at most 6, or N / N-k") as err:
        load_space(path, TEXT)
    assert str(path) in str(err.value)


def test_freeze_depth_of_backbone_defaults_names_the_backbone(tmp_path, tiny_bert_dir):
    text = BASE + "backbone_defaults: {max_length: 32, freeze_depth: {low: 0, high: 4}}\n"
    with pytest.raises(SearchSpaceError, match=r"backbone_defaults.freeze_depth: 4 is above the 2 blocks of '.*tiny"):
        load_space(write(tmp_path, text), TEXT, backbones=[str(tiny_bert_dir)])


FIRST = BASE.replace("full: {lr: 1.0e-4}", "full: {lr: {low: 1.0e-5, high: 1.0e-3, log: true}}") + \
    "training: {epochs: {low: 1, high: 4}, batch_size: [16, 32], warmup_ratio: 0.05}\n"


@pytest.mark.parametrize("text,match", [
    # numeric settings out of range (each used to pass validation and fail at run time or not at all)
    (BASE + "sampler: {n_startup_trials: -1}\n", r"sampler.n_startup_trials: value -1 is below the minimum 0"),
    (BASE + "sampler: {n_startup_trials: many}\n", r"sampler.n_startup_trials: value must be a number"),
    (BASE + "sampler: {multivariate: 1}\n", r"sampler.multivariate: must be true or false"),
    (BASE + "sampler: {seed_offset: 0.5}\n", r"sampler.seed_offset: value must be an integer"),
    (BASE + "pruner: {reduction_factor: 1}\n", r"pruner.reduction_factor: value 1 is below the minimum 2"),
    (BASE + "pruner: {min_resource: 0}\n", r"pruner.min_resource: value 0 is below the minimum 1"),
    (BASE + "pruner: {type: median, n_warmup_steps: -2}\n", r"pruner.n_warmup_steps: value -2 is below"),
    (BASE + "pruner: {min_resource: [1, 2]}\n", r"pruner.min_resource: must be a single value"),
    (BASE + "training: {epochs: 3}\npruner: {min_resource: 5}\n",
     r"pruner.min_resource: 5 is above the most epochs a trial runs \(training.epochs: 3\)"),
    # the long-standing range checks, one per key family the issue lists
    (BASE.replace("lr: 1.0e-4", "lr: 0"), r"adaptation.full.lr: value 0 is below the minimum"),
    (BASE.replace("full: {lr: 1.0e-4}", "lora: {lr: 1.0e-3, rank: 0}"), r"adaptation.lora.rank: value 0 is below"),
    (BASE.replace("full: {lr: 1.0e-4}", "lora: {lr: 1.0e-3, dropout: 1.0}"), r"adaptation.lora.dropout: value 1.0 is"),
    (BASE + "training: {dropout: -0.1}\n", r"training.dropout: value -0.1 is below the minimum 0"),
    (BASE + "training: {weight_decay: -1.0e-4}\n", r"training.weight_decay: value -0.0001 is below"),
    (BASE + "training: {epochs: 0}\n", r"training.epochs: value 0 is below the minimum 1"),
    (BASE + "training: {batch_size: .nan}\n", r"training.batch_size: value must be finite"),
    (BASE + "training: {label_smoothing: {low: 0.2, high: 0.1}}\n", r"training.label_smoothing: low 0.2 is above"),
    # first_trial values outside the space used to be dropped silently
    (FIRST + "first_trial: {lr: 0.5}\n", r"first_trial.lr: 0.5 is outside the space \(adaptation.full.lr: 1e-05 to "),
    (FIRST + "first_trial: {epochs: 9}\n", r"first_trial.epochs: 9 is outside the space \(training.epochs: 1 to 4"),
    (FIRST + "first_trial: {epochs: 2.5}\n", r"first_trial.epochs: 2.5 is outside the space"),
    (FIRST + "first_trial: {batch_size: 64}\n", r"first_trial.batch_size: 64 is outside .*: one of 16, 32\)"),
    (FIRST + "first_trial: {warmup_ratio: 0.1}\n", r"first_trial.warmup_ratio: 0.1 is outside .*fixed at 0.05"),
    (FIRST + "first_trial: {freeze_depth: 7}\n", r"first_trial.freeze_depth: 7 is outside .*backbones.minilm-l6"),
    (FIRST + "first_trial: {rank: 8}\n", r"first_trial.rank: applies to lora, but .* adaptation is full"),
    (FIRST + "first_trial: {backbone: bert-base}\n", r"first_trial.backbone: 'bert-base' is not one of the backbones"),
    (FIRST + "first_trial: {image_size: 64}\n", r"first_trial.image_size: does not apply to text-classification"),
])
def test_out_of_range_values_name_file_and_key(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SearchSpaceError, match=match) as err:
        load_space(path, TEXT)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_valid_sampler_pruner_and_first_trial_settings_load(tmp_path):
    text = FIRST + ("sampler: {type: tpe, n_startup_trials: auto, multivariate: false, seed_offset: 3}\n"
                    "pruner: {type: hyperband, min_resource: 2, reduction_factor: 2}\n"
                    "first_trial: {lr: 1.0e-4, epochs: 2, batch_size: 16, warmup_ratio: 0.05, freeze_depth: 6}\n")
    space = load_space(write(tmp_path, text), TEXT)
    assert space.sampler["seed_offset"] == 3 and space.pruner["reduction_factor"] == 2
    assert space.first_trial_params() == {"full.lr": 1.0e-4, "epochs": 2, "batch_size": 16,
                                          "minilm-l6.freeze_depth": 6}


def test_cli_backbones_override_and_defaults(tmp_path, tiny_bert_dir):
    text = BASE + "backbone_defaults: {max_length: 32, freeze_depth: {low: 0, high: N}}\n"
    space = load_space(write(tmp_path, text), TEXT, backbones=[str(tiny_bert_dir)])
    assert list(space.backbones) == [str(tiny_bert_dir)]
    assert space.backbones[str(tiny_bert_dir)].freeze_depth.high == 2  # from the local config.json
    with pytest.raises(BackboneError, match="unknown backbone 'not-a-backbone'"):
        load_space(write(tmp_path, text), TEXT, backbones=["not-a-backbone"])
    with pytest.raises(BackboneError, match="is for image data"):
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


IMAGE_SPACE = """
task: image-classification
backbones:
  efficientnet-lite0: {image_size: [128, 160], freeze_depth: 8, augment: crop-flip%s}
adaptation:
  full: {lr: 1.0e-3}
"""


def test_the_probe_has_its_own_image_size(tmp_path):
    """The probe is one pass over the images, so it may run at the backbone's pretrained size while fine-tunes
    search smaller ones (CIFAR subset at 8 per class: 76.8 % at 224 px against 71.5 % at 160)."""
    task = classifier(3)
    own = load_space(write(tmp_path, IMAGE_SPACE % ", probe_image_size: 224"), IMAGE)
    assert own.probe_config(IMAGE, task, seed=0).image_size == 224
    plain = load_space(write(tmp_path, IMAGE_SPACE % ""), IMAGE)
    assert plain.probe_config(IMAGE, task, seed=0).image_size == 160  # the largest searched size
    default = load_space(None, IMAGE).probe_config(IMAGE, task, seed=0)  # Lite0 and Lite2 side by side
    assert (default.backbone, default.image_size) == ("efficientnet-lite0+efficientnet-lite2", 224)
    for bad, match in ((", probe_image_size: [160, 224]", "probe_image_size: must be a single value"),
                       (", probe_image_size: 8", "probe_image_size: value 8 is below the minimum 16")):
        with pytest.raises(SearchSpaceError, match=match):
            load_space(write(tmp_path, IMAGE_SPACE % bad), IMAGE)
    with pytest.raises(SearchSpaceError, match="probe_image_size applies to image backbones only"):
        load_space(write(tmp_path, BASE.replace("max_length: 64,", "max_length: 64, probe_image_size: 224,")), TEXT)


def test_the_probe_can_have_its_own_backbone(tmp_path):
    """``probe: {backbone, image_size}``: the probe reads other (here: concatenated) features than the fine-tunes,
    with every block frozen; a backbone chosen on the command line replaces it as it replaces the space's list."""
    task = classifier(3)
    text = IMAGE_SPACE % "" + "probe: {backbone: efficientnet-lite0+efficientnet-lite1, image_size: 192}\n"
    space = load_space(write(tmp_path, text), IMAGE)
    config = space.probe_config(IMAGE, task, seed=0)
    assert (config.backbone, config.image_size, config.freeze_depth) == (
        "efficientnet-lite0+efficientnet-lite1", 192, 16 + 21)
    assert set(space.backbones) == {"efficientnet-lite0"}  # the fine-tunes' list is untouched
    chosen = load_space(write(tmp_path, text), IMAGE, backbones=["efficientnet-lite1"]).probe_config(
        IMAGE, task, seed=0)
    assert (chosen.backbone, chosen.image_size) == ("efficientnet-lite1", 224)  # backbone_defaults, not 192
    sized = load_space(write(tmp_path, IMAGE_SPACE % "" + "probe: {image_size: 200}\n"), IMAGE)
    assert sized.probe_config(IMAGE, task, seed=0).image_size == 200
    assert load_space(write(tmp_path, IMAGE_SPACE % "" + "probe: false\n"), IMAGE).probe_config(
        IMAGE, task, seed=0) is None
    for bad, match in (("probe: {backbone: minilm-l6}", "probe.backbone: backbone 'minilm-l6' is for text data"),
                       ("probe: {backbone: efficientnet-lite0+minilm-l6}", "probe.backbone: .*not an image"),
                       ("probe: {max_length: 64}", "probe.max_length: unknown key; known: backbone, image_size"),
                       ("probe: {image_size: 8}", "probe.image_size: value 8 is below the minimum 16"),
                       ("probe: yes please", "probe: must be true, false or a mapping")):
        with pytest.raises(SearchSpaceError, match=match):
            load_space(write(tmp_path, IMAGE_SPACE % "" + bad + "\n"), IMAGE)
