import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("make_config_reference", ROOT / "scripts" / "make_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_field_has_help_and_the_reference_is_current():
    script = load_script()
    assert script.undocumented() == []
    text = script.render()
    assert "| `optim.lr` | `float` | `0.01` | peak learning rate, reached after the warmup |" in text
    assert "### `tiny`" in text and "- `model.features`: `[8, 16, 32, 64]`" in text
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == text, "run python scripts/make_config_reference.py"


def test_help_is_the_trailing_comment_of_the_field():
    docs = load_script().field_docs("class A:\n    x: int = 1  # one\n    y: list[str] = field(\n        default_factory=list)  # many\n    z: int = 2\n")
    assert docs == {"A": {"x": ("int", "one"), "y": ("list[str]", "many"), "z": ("int", "")}}
