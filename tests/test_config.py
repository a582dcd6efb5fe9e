"""Pipeline YAML -> typed frozen config: errors name the file, the key and what was expected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ecg.config import find_pipeline, flatten, load_config, to_dict
from ecg.errors import ConfigError

from conftest import write_pipeline

REPO = Path(__file__).resolve().parent.parent
GOOD = "download:\n  database: mitdb\n  version: 1.0.0\n"


@pytest.mark.parametrize("name", ["mitdb", "ptbdb", "smoke"])
def test_shipped_pipelines_load(name):
    config = load_config(REPO / "pipelines" / f"{name}.yaml")
    assert config.name == name
    assert config.root == REPO
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"


def test_unknown_key_names_file_key_and_the_keys_it_could_be(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + "  verison: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert "download.verison: unknown key" in message
    assert "version" in message.split("expected one of:")[1]


def test_unknown_section_is_an_error(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + "trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="trian: unknown key"):
        load_config(path)


def test_wrong_type_says_what_was_expected(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + "  retries: four\n")
    expected = r"download\.retries: expected an integer, got str 'four'"
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_impossible_value_is_an_error(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + "  retries: -1\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: download\.retries: zero or more retries"):
        load_config(path)


def test_a_noise_band_must_be_low_then_high(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + "augment:\n  noise_band_hz: [10, 1]\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: augment\.noise_band_hz: \[low, high\]"):
        load_config(path)
    config = load_config(path, ["augment.noise_band_hz=[0.5, 10]"])
    assert config.augment.noise_band_hz == (0.5, 10.0)


@pytest.mark.parametrize(("key", "value"), [("template_dropout", 0.3), ("template_scale", 0.2)])
def test_a_template_augmentation_needs_a_template(tmp_path, key, value):
    path = write_pipeline(tmp_path, "p", GOOD + f"augment:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"augment\.{key}: 0 unless segment\.beat"):
        load_config(path)
    config = load_config(path, ["segment.beat_template=true"])
    assert config.augment.active and getattr(config.augment, key) == value
    with pytest.raises(ConfigError, match=rf"{key}: a \w+ below 1"):
        load_config(path, ["segment.beat_template=true", f"augment.{key}=1"])


def test_an_empty_lead_alternative_is_an_error(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + 'signal:\n  leads: [MLII, "V1|"]\n')
    with pytest.raises(ConfigError, match=r"p\.yaml: signal\.leads: lead names, alternatives"):
        load_config(path)
    assert load_config(path, ["signal.leads=[MLII, V1|V2]"]).signal.leads == ("MLII", "V1|V2")


def test_unknown_database_lists_the_supported_ones(tmp_path):
    path = write_pipeline(tmp_path, "p", "download:\n  database: mimic\n")
    with pytest.raises(ConfigError, match=r"download\.database: expected one of 'mitdb', 'ptbdb'"):
        load_config(path)


def test_missing_required_key(tmp_path):
    path = write_pipeline(tmp_path, "p", "download:\n  version: 1.0.0\n")
    with pytest.raises(ConfigError, match=r"download\.database: missing required key"):
        load_config(path)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = write_pipeline(tmp_path, "p", "download: [\n")
    with pytest.raises(ConfigError, match="p.yaml: not valid YAML"):
        load_config(path)


def test_set_overrides_a_value_with_its_yaml_type(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD)
    config = load_config(path, ["download.retries=7", "download.records=100,101"])
    assert config.download.retries == 7
    assert config.download.records == ("100", "101")


def test_set_with_a_wrong_type_is_an_error(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD)
    with pytest.raises(ConfigError, match="download.read_timeout_s: expected a number"):
        load_config(path, ["download.read_timeout_s=soon"])


def test_set_without_equals_is_an_error(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["download.retries"])


def test_record_numbers_in_yaml_become_names(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + "  records: [100, 201]\n")
    assert load_config(path).download.records == ("100", "201")


def test_paths_are_relative_to_the_project_not_the_working_directory(tmp_path, monkeypatch):
    path = write_pipeline(tmp_path, "p", GOOD)
    monkeypatch.chdir(REPO)
    config = load_config(path)
    assert config.data_path == tmp_path / "data"


def test_pipeline_found_by_name_from_a_subfolder(tmp_path, monkeypatch):
    path = write_pipeline(tmp_path, "p", GOOD)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert find_pipeline("p") == path
    with pytest.raises(ConfigError, match="no pipeline named 'q'"):
        find_pipeline("q")


def test_flattened_config_names_every_param():
    config = load_config(REPO / "pipelines" / "mitdb.yaml")
    flat = flatten(to_dict(config))
    assert flat["download.database"] == "mitdb"
    assert flat["download.records"] == []
    assert "root" not in flat


def test_averaged_epochs_are_at_most_the_epochs(tmp_path):
    path = write_pipeline(tmp_path, "p", GOOD + "train:\n  epochs: 4\n  average_epochs: 3\n")
    assert load_config(path).train.average_epochs == 3
    with pytest.raises(ConfigError, match=r"average_epochs: between 1 \(the last epoch\) and"):
        load_config(path, ["train.average_epochs=5"])


@pytest.mark.parametrize(
    ("yaml_text", "section", "key", "value", "refused"),
    [
        (
            "train:\n  label_smoothing: 0.1\n",
            "train",
            "label_smoothing",
            0.1,
            [("train.label_smoothing=1", r"label_smoothing: a share in \[0, 1\)")],
        ),
        (
            "model:\n  ensemble: 3\n  ensemble_patients: 0.8\n",
            "model",
            "ensemble_patients",
            0.8,
            [
                ("model.ensemble=1", r"ensemble_patients: an ensemble \(model.ensemble 2"),
                ("model.ensemble_patients=0", r"ensemble_patients: a share in \(0, 1\]"),
            ],
        ),
        (
            "augment:\n  af_context: 0.1\n",
            "augment",
            "af_context",
            0.1,
            [
                ("augment.af_context=1", r"af_context: a share in \[0, 1\)"),
                ("augment.af_cv=0", r"af_cv: a coefficient of variation in \(0, 1\)"),
                (
                    ("augment.af_context=0", "augment.af_waveform=true"),
                    r"af_waveform: false unless af_context",
                ),
            ],
        ),
        (
            "evaluate:\n  adapt_priors: record\n  prior_shrinkage: 0.5\n",
            "evaluate",
            "prior_shrinkage",
            0.5,
            [
                ("evaluate.prior_shrinkage=1", r"prior_shrinkage: a weight in \[0, 1\)"),
                ("evaluate.adapt_priors=none", r"prior_shrinkage: 0 unless adapt_priors"),
            ],
        ),
        (
            "evaluate:\n  fibrillation_gate: 0.1\n",
            "evaluate",
            "fibrillation_gate",
            0.1,
            [("evaluate.fibrillation_gate=-0.1", r"fibrillation_gate: 0 \(off\) or the")],
        ),
        (
            "train:\n  weight_cap: 50\n",
            "train",
            "weight_cap",
            50,
            [("train.weight_cap=0.5", r"weight_cap: 0 \(no ceiling\) or at least 1")],
        ),
        (
            "train:\n  patient_adversary: 1\n",
            "train",
            "patient_adversary",
            1,
            [("train.patient_adversary=-1", r"patient_adversary: 0 \(none\) or a positive")],
        ),
        (
            "augment:\n  fusion_share: 1\n",
            "augment",
            "fusion_share",
            1,
            [("augment.fusion_share=-1", r"fusion_share: 0 \(none\) or a positive multiple")],
        ),
        (
            "segment:\n  beat_template: true\n  template_s: 300\n",
            "segment",
            "template_s",
            300,
            [
                ("segment.template_s=-1", r"template_s: 0 \(the whole record\) or a positive"),
                ("segment.beat_template=false", r"template_s: 0 unless beat_template is true"),
            ],
        ),
        (
            "segment:\n  beat_template: true\n  template_s: 300\n  template_core: 0.5\n",
            "segment",
            "template_core",
            0.5,
            [
                ("segment.template_core=0", r"template_core: a fraction in \(0, 1\]"),
                ("segment.template_core=1.5", r"template_core: a fraction in \(0, 1\]"),
                ("segment.template_s=0", r"template_core: 1 unless template_s is set"),
            ],
        ),
    ],
    ids=[
        "label_smoothing",
        "ensemble_patients",
        "af_context",
        "prior_shrinkage",
        "gate",
        "cap",
        "adversary",
        "fusion",
        "local_template",
        "template_core",
    ],
)
def test_a_setting_is_read_and_its_impossible_values_refused(
    tmp_path, yaml_text, section, key, value, refused
):
    path = write_pipeline(tmp_path, "p", GOOD + yaml_text)
    assert getattr(getattr(load_config(path), section), key) == value
    for override, message in refused:
        with pytest.raises(ConfigError, match=message):
            load_config(path, [override] if isinstance(override, str) else list(override))
