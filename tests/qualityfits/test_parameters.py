"""QualityParameters: one validator for text, JSON and typed values."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

import qualityfits
from qualityfits.errors import InvalidParameterError
from qualityfits.parameters import (
    PARAMETER_BY_NAME,
    PARAMETERS,
    QualityParameters,
)


def test_every_field_is_declared_once_in_order():
    fields = [f.name for f in dataclasses.fields(QualityParameters)]
    assert fields == [p.name for p in PARAMETERS]
    for param in PARAMETERS:
        assert param.help
        assert param.option.startswith("--")
        assert param.name == param.name.lower()
        field = next(f for f in dataclasses.fields(QualityParameters)
                     if f.name == param.name)
        assert field.default == param.default


def test_exported_from_the_package():
    assert qualityfits.QualityParameters is QualityParameters


def test_defaults():
    params = QualityParameters()
    assert params.to_json() == {"zeropoint": None, "pixscale": None,
                                "mask_convention": "auto",
                                "weight_type": "MAP_WEIGHT"}
    assert params.given() == {}


@pytest.mark.parametrize("params", [
    QualityParameters(),
    QualityParameters(zeropoint=0.0),
    QualityParameters(zeropoint=50.0),
    QualityParameters(zeropoint=25.123456789012345, pixscale=0.187),
    QualityParameters(pixscale=100.0, mask_convention="zero"),
    QualityParameters(pixscale=5e-324, mask_convention="nonzero"),
])
def test_json_round_trip(params):
    doc = json.loads(json.dumps(params.to_json(), allow_nan=False))
    assert QualityParameters.from_json(doc) == params


@pytest.mark.parametrize("params", [
    QualityParameters(zeropoint=25.123456789012345, pixscale=0.187),
    QualityParameters(zeropoint=0.0, mask_convention="nonzero"),
])
def test_text_round_trip(params):
    text = {name: "" if value is None
            else value if isinstance(value, str) else repr(value)
            for name, value in params.to_json().items()}
    assert QualityParameters.from_text(text) == params


def test_integers_become_floats():
    params = QualityParameters(zeropoint=30, pixscale=1)
    assert isinstance(params.zeropoint, float)
    assert isinstance(params.pixscale, float)
    assert params.to_json()["zeropoint"] == 30.0


def test_text_forms():
    params = QualityParameters.from_text(
        {"ZeroPoint": " 26.5 ", "pixscale": "", "mask_convention": "ZERO"})
    assert params == QualityParameters(zeropoint=26.5,
                                       mask_convention="zero")
    # a blank value is "not given"
    assert QualityParameters.from_text(
        {"zeropoint": "  ", "mask_convention": ""}) == QualityParameters()
    # choices in any case, kept as declared (SExtractor's upper case)
    assert QualityParameters.from_text(
        {"weight_type": " map_var "}).weight_type == "MAP_VAR"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"zeropoint": "abc"}, "zeropoint: 'abc' is not a number"),
    ({"zeropoint": -1.0}, "zeropoint: -1 is outside [0, 50]"),
    ({"zeropoint": 50.5}, "zeropoint: 50.5 is outside [0, 50]"),
    ({"zeropoint": math.inf}, "zeropoint: inf is not a finite number"),
    ({"zeropoint": True}, "zeropoint: True is not a number"),
    ({"pixscale": -1}, "pixscale: -1 is outside (0, 100]"),
    ({"pixscale": 0.0}, "pixscale: 0 is outside (0, 100]"),
    ({"pixscale": 100.01}, "pixscale: 100.01 is outside (0, 100]"),
    ({"pixscale": math.nan}, "pixscale: nan is not a finite number"),
    ({"mask_convention": "odd"},
     "mask_convention: 'odd' is not one of auto, zero, nonzero"),
    ({"mask_convention": None},
     "mask_convention: None is not one of auto, zero, nonzero"),
])
def test_refusals_name_the_field(kwargs, message):
    with pytest.raises(InvalidParameterError) as info:
        QualityParameters(**kwargs)
    assert str(info.value) == message
    # the same rule whichever way the value comes
    with pytest.raises(InvalidParameterError) as info:
        QualityParameters.from_json(kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(("text", "message"), [
    ({"zeropoint": "abc"}, "zeropoint: 'abc' is not a number"),
    ({"zeropoint": "-2.5"}, "zeropoint: -2.5 is outside [0, 50]"),
    ({"pixscale": "0"}, "pixscale: 0 is outside (0, 100]"),
    ({"pixscale": "nan"}, "pixscale: nan is not a finite number"),
    ({"mask_convention": "some"},
     "mask_convention: 'some' is not one of auto, zero, nonzero"),
    ({"colour": "red"},
     ("colour: unknown parameter (known: zeropoint, pixscale, "
      "mask_convention, weight_type)")),
])
def test_text_refusals(text, message):
    with pytest.raises(InvalidParameterError) as info:
        QualityParameters.from_text(text)
    assert str(info.value) == message


def test_json_refuses_unknown_keys_and_strings():
    with pytest.raises(InvalidParameterError, match=r"^flat: unknown"):
        QualityParameters.from_json({"flat": "f.fits"})
    # JSON is typed: a number written as a string is refused
    with pytest.raises(InvalidParameterError,
                       match=r"^zeropoint: '30' is not a number$"):
        QualityParameters.from_json({"zeropoint": "30"})


def test_frozen():
    params = QualityParameters(zeropoint=30.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.zeropoint = 31.0  # type: ignore[misc]


def test_ranges_are_the_declared_ones():
    assert PARAMETER_BY_NAME["zeropoint"].range_text == "[0, 50]"
    assert PARAMETER_BY_NAME["pixscale"].range_text == "(0, 100]"
    assert PARAMETER_BY_NAME["mask_convention"].default == "auto"


def test_configuration_doc_lists_every_parameter():
    doc = (Path(__file__).resolve().parents[2] / "docs"
           / "configuration.md").read_text()
    for param in PARAMETERS:
        row = next((line for line in doc.splitlines()
                    if line.startswith(f"| `{param.name}` | `{param.option}")),
                   None)
        assert row is not None, param.name
        assert param.range_text in row, param.name
