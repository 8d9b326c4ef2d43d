from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from evtp_cli.errors import SpecError
from evtp_cli.spec import Registry, build_config, parse_spec, split_list_option


def test_parse_plain_and_options():
    assert parse_spec("evtp").name == "evtp"
    assert parse_spec("evtp").options == {}
    spec = parse_spec("mevis:root=/data/mevis,split=valid_u")
    assert spec.name == "mevis"
    assert spec.options == {"root": "/data/mevis", "split": "valid_u"}
    assert str(spec) == "mevis:root=/data/mevis,split=valid_u"
    assert parse_spec("refcoco+").name == "refcoco+"


@pytest.mark.parametrize("bad", ["", ":a=1", "evtp:", "evtp:spatial_weight", "evtp:=3", "evtp:a=1,a=2", "ev tp", "evtp:a b=1"])
def test_malformed_specs_raise(bad):
    with pytest.raises(SpecError):
        parse_spec(bad)


def test_split_list_option_rule():
    assert split_list_option(["synthetic-image:seed=1,n=50,synthetic-video"]) == [
        "synthetic-image:seed=1,n=50",
        "synthetic-video",
    ]
    assert split_list_option(["evtp", "random"]) == ["evtp", "random"]
    assert split_list_option(["evtp:spatial_weight=0.5,mode=global,kcenter,divprune"]) == [
        "evtp:spatial_weight=0.5,mode=global",
        "kcenter",
        "divprune",
    ]
    assert split_list_option(["0.1,0.2", "0.3"]) == ["0.1", "0.2", "0.3"]


@dataclass
class _Cfg:
    a: int = 1
    b: float = 0.5
    c: bool = False
    mode: Literal["x", "y"] = "x"
    path: Optional[str] = None


def test_build_config_types_and_errors():
    cfg = build_config(_Cfg, {"a": "3", "b": "0.25", "c": "true", "mode": "y", "path": "/p"}, "thing 't'")
    assert (cfg.a, cfg.b, cfg.c, cfg.mode, cfg.path) == (3, 0.25, True, "y", "/p")
    with pytest.raises(SpecError, match="known options: a, b, c, mode, path"):
        build_config(_Cfg, {"zzz": "1"}, "thing 't'")
    with pytest.raises(SpecError, match="integer"):
        build_config(_Cfg, {"a": "one"}, "thing 't'")
    with pytest.raises(SpecError, match="one of x, y"):
        build_config(_Cfg, {"mode": "z"}, "thing 't'")


def test_registry_rejects_duplicates_and_lists_known_names():
    class Thing:
        @dataclass
        class Config:
            size: int = 2

        def __init__(self, config):
            self.config = config

    reg = Registry("widget")
    reg.register("alpha", Thing, "first")
    reg.register("beta", Thing, "second")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", Thing, "again")
    with pytest.raises(SpecError, match="known widgets: alpha, beta"):
        reg.build("gamma")
    assert reg.build("alpha:size=5").config.size == 5
    assert reg.build("alpha", size=7).config.size == 7
