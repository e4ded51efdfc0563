"""The shipped example configuration is valid and documents the defaults."""

from pathlib import Path

import msgspec
import yaml

from proto.config import Config, Wan, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_and_its_scorer_section_is_the_defaults():
    cfg = load_config(ROOT / "wanctl.example.yaml")
    # Compared as written: load_config moves the default var/ paths under var/<config stem>/.
    assert parse_config(yaml.safe_load((ROOT / "wanctl.example.yaml").read_text())).scorer == parse_config({}).scorer
    assert [w.name for w in cfg.wans] == ["wan1"]


def test_example_config_lists_every_key_of_every_section():
    raw = yaml.safe_load((ROOT / "wanctl.example.yaml").read_text())

    def keys(struct_type, value, path):
        missing = []
        for field in msgspec.structs.fields(struct_type):
            if field.name == "base_dir":
                continue
            if field.name not in value:
                missing.append(f"{path}{field.name}")
                continue
            inner = field.type
            if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
                missing += keys(inner, value[field.name], f"{path}{field.name}.")
        return missing

    missing = keys(Config, raw, "") + keys(Wan, raw["wans"][0], "wans[0].")
    assert missing == []


def test_sim_config_is_valid():
    load_config(ROOT / "wanctl.sim.yaml")
