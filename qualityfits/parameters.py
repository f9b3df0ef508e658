"""The science parameters of an assessment: one type, one validator.

`QualityParameters` is what a caller may choose about one image beyond
the files (the zero point, the pixel scale, which mask values are bad).
It is built from typed values (`assess`'s callers), from text (the
command line, a web form: `QualityParameters.from_text`) or from JSON
(the worker's spec, the service's database:
`QualityParameters.from_json`), and checks its values the same way for
all of them, in ``__post_init__``, raising
`qualityfits.errors.InvalidParameterError` with a message
``"<name>: <problem>"``.

`PARAMETERS` declares every parameter once: its name, kind, unit, help
text and allowed range or choices.  The command line builds its options
from it and ``docs/configuration.md`` lists it.  Adding a parameter is a
field of `QualityParameters` and its entry in `PARAMETERS`, in this
module (``tests/qualityfits/test_parameters.py`` checks the two
agree).

>>> from qualityfits.parameters import QualityParameters
>>> QualityParameters.from_text({"zeropoint": "30", "pixscale": ""}).given()
{'zeropoint': 30.0}
>>> QualityParameters(pixscale=-1)
Traceback (most recent call last):
  ...
qualityfits.errors.InvalidParameterError: pixscale: -1 is outside (0, 100]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Self

from qualityfits.errors import InvalidParameterError

#: A JSON value of a parameter.
JSONValue = float | str | None


@dataclass(frozen=True)
class Parameter:
    """How one parameter is written, checked and explained.

    Attributes
    ----------
    name : str
        The field of `QualityParameters` (lower case): the key in text
        and JSON forms and in error messages.
    kind : {"number", "choice"}
        A real number (None: not given), or one of ``choices``.
    unit : str
        Unit of a number ("" when it has none).
    help : str
        One sentence for a person (command-line help, web form, docs).
    low, high : float
        Allowed range of a number.
    low_open, high_open : bool
        Whether ``low`` (``high``) itself is excluded.
    choices : tuple of str
        The allowed values of a choice; the first is the default.
    option : str
        The command-line option.
    metavar : str
        The option's value in the command-line help.
    label : str
        A short name for a person (a form's field label; default: the
        name, capitalised).
    """

    name: str
    kind: Literal["number", "choice"]
    unit: str
    help: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    option: str = ""
    metavar: str = ""
    label: str = ""

    @property
    def title(self) -> str:
        """The label with the unit: ``Pixel scale [arcsec/pixel]``."""
        label = self.label or self.name.replace("_", " ").capitalize()
        return f"{label} [{self.unit}]" if self.unit else label

    @property
    def default(self) -> JSONValue:
        """The value when the parameter is not given."""
        return self.choices[0] if self.kind == "choice" else None

    @property
    def range_text(self) -> str:
        """The allowed range or choices, as messages write them."""
        if self.kind == "choice":
            return ", ".join(self.choices)
        return (f"{'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")

    def check(self, value: Any) -> JSONValue:
        """Return ``value`` checked (a number as float).

        Raises
        ------
        InvalidParameterError
            ``"<name>: <problem>"``.
        """
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise InvalidParameterError(
                    f"{self.name}: {value!r} is not one of "
                    f"{self.range_text}")
            return value
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidParameterError(
                f"{self.name}: {value!r} is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise InvalidParameterError(
                f"{self.name}: {number!r} is not a finite number")
        below = number < self.low or (self.low_open and number == self.low)
        above = number > self.high or (self.high_open
                                       and number == self.high)
        if below or above:
            raise InvalidParameterError(
                f"{self.name}: {number:g} is outside {self.range_text}")
        return number

    def parse(self, text: str) -> JSONValue:
        """Return the value written as ``text`` (blank: the default).

        Raises
        ------
        InvalidParameterError
            ``"<name>: <problem>"``.
        """
        text = text.strip()
        if not text:
            return self.default
        if self.kind == "choice":
            # Any case: ``zero``, ``ZERO``; ``map_var``, ``MAP_VAR``.
            folded = {c.lower(): c for c in self.choices}
            return self.check(folded.get(text.lower(), text))
        try:
            number = float(text)
        except ValueError:
            raise InvalidParameterError(
                f"{self.name}: {text!r} is not a number") from None
        return self.check(number)


#: Every science parameter, in the order the command line lists them.
PARAMETERS: Final[tuple[Parameter, ...]] = (
    Parameter(
        "zeropoint", "number", "mag",
        "magnitude of a source giving 1 ADU in the image, 0 <= ZP <= 50 "
        "(0 for an image in maggies); default: the header's PHOTZP, "
        "MAGZERO, ..., else instrumental magnitudes",
        low=0.0, high=50.0, option="--zeropoint", metavar="ZP",
        label="Zero point"),
    Parameter(
        "pixscale", "number", "arcsec/pixel",
        "pixel scale in arcsec per pixel, 0 < S <= 100, used when the "
        "image has no celestial WCS",
        low=0.0, high=100.0, low_open=True, option="--pixscale",
        metavar="ARCSEC", label="Pixel scale"),
    Parameter(
        "mask_convention", "choice", "",
        "which mask values mark bad pixels: auto (the minority value), "
        "zero (0 is bad, CFHT Elixir masks) or nonzero (flag maps)",
        choices=("auto", "zero", "nonzero"), option="--mask-bad-value",
        label="Bad pixels of the mask"),
    Parameter(
        "weight_type", "choice", "",
        "what the weight map holds, as SExtractor's WEIGHT_TYPE: "
        "MAP_WEIGHT (relative inverse variance, e.g. a CP oow file), "
        "MAP_VAR (relative variance) or MAP_RMS (noise in ADU); "
        "0 weight (or infinite variance/RMS) marks a bad pixel",
        choices=("MAP_WEIGHT", "MAP_VAR", "MAP_RMS"),
        option="--weight-type", label="Weight map type"),
)
#: The parameters by name.
PARAMETER_BY_NAME: Final[Mapping[str, Parameter]] = {
    p.name: p for p in PARAMETERS}


def _refuse_unknown(names: set[str]) -> None:
    unknown = sorted(names - set(PARAMETER_BY_NAME))
    if unknown:
        known = ", ".join(PARAMETER_BY_NAME)
        raise InvalidParameterError(
            f"{', '.join(unknown)}: unknown parameter (known: {known})")


@dataclass(frozen=True)
class QualityParameters:
    """The science parameters of one assessment, checked.

    Attributes
    ----------
    zeropoint : float or None
        Magnitude of a source giving 1 ADU, 0 <= ZP <= 50; None: from
        the header (``PHOTZP``, ``MAGZERO``...), else instrumental
        magnitudes.
    pixscale : float or None
        Arcsec per pixel, 0 < S <= 100, used when the image has no
        celestial WCS; None: from the header, if any.
    mask_convention : {"auto", "zero", "nonzero"}
        Which mask values mark bad pixels (see
        `qualityfits.io.mask_to_bad`).
    weight_type : {"MAP_WEIGHT", "MAP_VAR", "MAP_RMS"}
        What the weight map holds (see `qualityfits.weights.noise_map`).

    Raises
    ------
    InvalidParameterError
        A value outside its range or choices, ``"<name>: <problem>"``.
    """

    zeropoint: float | None = None
    pixscale: float | None = None
    mask_convention: Literal["auto", "zero", "nonzero"] = "auto"
    weight_type: Literal["MAP_WEIGHT", "MAP_VAR", "MAP_RMS"] = "MAP_WEIGHT"

    def __post_init__(self) -> None:
        """Check every value against `PARAMETERS`; numbers become floats."""
        for param in PARAMETERS:
            object.__setattr__(self, param.name,
                               param.check(getattr(self, param.name)))

    @classmethod
    def from_text(cls, values: Mapping[str, str]) -> Self:
        """Parse values written as text (a command line, a web form).

        Parameters
        ----------
        values : mapping of str to str
            Parameter name (any case) to its text; a blank text is the
            parameter's default.  Parameters not named take theirs.

        Raises
        ------
        InvalidParameterError
            An unknown name, or a value that is not valid.
        """
        lowered = {name.lower(): text for name, text in values.items()}
        _refuse_unknown(set(lowered))
        parsed: dict[str, Any] = {
            name: PARAMETER_BY_NAME[name].parse(text)
            for name, text in lowered.items()}
        return cls(**parsed)

    def to_json(self) -> dict[str, JSONValue]:
        """Return every parameter as a JSON value, by name."""
        return {p.name: getattr(self, p.name) for p in PARAMETERS}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Self:
        """Read back what `to_json` returned (missing keys: defaults).

        Raises
        ------
        InvalidParameterError
            An unknown key, or a value of the wrong type or range.
        """
        _refuse_unknown(set(doc))
        return cls(**doc)

    def given(self) -> dict[str, JSONValue]:
        """Return the parameters that differ from their default."""
        return {name: value for name, value in self.to_json().items()
                if value != PARAMETER_BY_NAME[name].default}

