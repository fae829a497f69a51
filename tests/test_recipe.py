"""Recipes: the demo validates; malformed recipes give one clear error and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_recipe

from pipeline.catalogs import load_catalogs
from pipeline.recipe import Recipe, RecipeError, load_recipe


def test_demo_recipe_is_valid_and_spans_catalogs() -> None:
    recipe = load_recipe(REPO / "manifests" / "demo.yaml")
    assert recipe.num_dialogues == 48
    catalogs = load_catalogs(recipe)
    assert len(catalogs.speakers) >= 24
    assert len(catalogs.topics) >= 40
    assert set(recipe.scenarios.emotions) == {"neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted"}


def test_every_field_is_described() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                missing += walk(annotation)
        return missing

    assert walk(Recipe) == []


def test_num_dialogues_override_changes_the_fingerprint(tmp_path: Path) -> None:
    path = write_recipe(tmp_path)
    assert load_recipe(path).fingerprint() != load_recipe(path, num_dialogues=5).fingerprint()
    assert load_recipe(path, num_dialogues=5).num_dialogues == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nseed: [1, 2\n", "not valid YAML"),
        ("name: x\nnum_dialgues: 3\n", "num_dialgues: unknown key"),
        ("name: x\nseed: many\n", "seed: Input should be a valid integer"),
        ("name: x\nscenarios: {emotions: [jolly]}\n", "'jolly' is not allowed"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("seed: 1\n", "name: Field required"),
        ("name: x\nllm: {backend: openai}\n", "needs base_url"),
    ],
)
def test_malformed_recipes_raise_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_speaker_and_topic_are_named(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, scenarios={"speakers": ["spk-01", "nobody-42"]}))
    with pytest.raises(RecipeError, match="unknown speaker 'nobody-42'"):
        load_catalogs(recipe)
    recipe = load_recipe(write_recipe(tmp_path, scenarios={"topics": ["no-such-topic"]}))
    with pytest.raises(RecipeError, match="unknown topic 'no-such-topic'"):
        load_catalogs(recipe)


def test_unknown_espeak_voice_in_a_catalog_is_refused(tmp_path: Path) -> None:
    from pipeline.catalogs import check_voices

    speakers = tmp_path / "speakers.yaml"
    speakers.write_text(
        "speakers:\n  - {id: a, espeak: {voice: 'xx-nowhere'}}\nassistants:\n  - {id: b, espeak: {voice: en-us}}\n"
    )
    recipe = load_recipe(write_recipe(tmp_path, tts={"speakers": str(speakers)}))
    with pytest.raises(RecipeError, match="no voice 'xx-nowhere'"):
        check_voices(load_catalogs(recipe))


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nseed: [1, 2\n",
        "name: x\nbogus: 1\n",
        "name: x\nscenarios: {emotions: [jolly]}\n",
        "name: x\nscenarios: {speakers: [nobody]}\n",
    ],
)
def test_cli_rejects_bad_recipe_and_writes_nothing(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    result = run_cli("build", str(path), "--out", str(out), timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("error:") == 1
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parents[1] / "manifests").glob("*.yaml")))
def test_every_packaged_recipe_is_valid(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name
