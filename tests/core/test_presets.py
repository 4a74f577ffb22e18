"""Presets: the article's recipe kept (and corrected), ours, a peer, and the one tests use."""

from __future__ import annotations

import pytest

from distill_core.config import ConfigError, DistillConfig
from distill_core.presets import PRESETS, get_preset, list_presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_round_trips_through_json(name: str) -> None:
    config = get_preset(name)
    assert config.preset == name
    assert DistillConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_accepts_the_common_cli_overrides(name: str) -> None:
    config = get_preset(name).with_overrides(
        ["steps=3", "image_size=48", "batch_size=2", "lr=0.005", "seed=7"]
    )
    assert (config.steps, config.image_size, config.batch_size, config.lr, config.seed) == (
        3,
        48,
        2,
        0.005,
        7,
    )


def test_get_preset_returns_a_fresh_config_each_time() -> None:
    first = get_preset("default")
    first.losses["ssim"] = 9.0
    first.student["width"] = 4
    assert "ssim" not in get_preset("default").losses or get_preset("default").losses["ssim"] != 9
    assert get_preset("default").student["width"] != 4


def test_an_unknown_preset_names_the_ones_there_are() -> None:
    with pytest.raises(ConfigError, match="preset 'best' is unknown; choose from seed, default"):
        get_preset("best")


def test_seed_is_the_articles_recipe_in_steps() -> None:
    config = get_preset("seed")
    assert config.student_family == "tiny_style"
    assert config.student == {"channels": [16, 32, 64], "blocks": 3, "norm": "instance"}
    assert config.losses == {"pixel_mse": 0.4, "style": 0.4, "kl": 0.2}
    assert (config.optimizer, config.lr) == ("adam", 1e-4)
    # 30 epochs of 700 images at batch 16, StepLR(5 epochs, 0.9).
    assert (config.steps, config.lr_step_size, config.lr_gamma) == (1320, 220, 0.9)
    assert (config.batch_size, config.image_size) == (16, 256)


def test_seed_notes_state_how_it_deviates_from_the_article() -> None:
    notes = PRESETS["seed"].notes
    for phrase in ("teacher's output", "channel-wise", "quantize_dynamic", "static quantization"):
        assert phrase in notes


def test_the_listing_shows_sizes_and_default_does_a_fifth_of_seeds_work() -> None:
    rows = {row["name"]: row for row in list_presets()}
    assert list(rows) == list(PRESETS)
    assert rows["seed"]["params"] == 276_675
    assert 50_000 <= rows["default"]["params"] <= 60_000
    assert rows["default"]["macs_at_256"] * 5 <= rows["seed"]["macs_at_256"]
    for row in rows.values():
        assert set(row) >= {"name", "family", "params", "macs_at_256", "steps", "description"}


def test_tiny_is_small_enough_for_tests() -> None:
    config = get_preset("tiny")
    assert config.steps <= 4 and config.image_size == config.eval_size == 32
    assert config.latency_warmup >= 10 and config.latency_runs <= 5
    assert config.checkpoint_every < config.steps and config.max_eval_images <= 4
