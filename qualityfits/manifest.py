"""``manifest.json``: the list of a product set's files, one owner.

`qualityfits.products.write_products` writes it and returns it; the
UWS service reads it back (as `Manifest.read`) to publish the products
as job results.  The file is JSON, format version `FORMAT_VERSION`::

    {
     "version": 2,
     "image": "exposure.fits.fz",
     "qualityfits": "0.9.0",
     "n_extensions": 36,
     "failed_extensions": ["ccd07"],
     "flags": ["FWHM_HIGH"],
     "products": [
      {"id": "summary", "file": "exposure_summary.vot",
       "mime": "application/x-votable+xml", "size": 140213,
       "description": "Statistics per CCD and for the exposure (VOTable)"},
      ...
     ]
    }

``"version"`` is the format of this file (version 1 put the qualityfits
version there; it is ``"qualityfits"`` now).  The products are in the
order a client should see them: the summary VOTable first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Self

#: Format version of ``manifest.json``, the file's ``"version"``.
FORMAT_VERSION: Final = 2
#: The file's name in the output directory.
MANIFEST_NAME: Final = "manifest.json"


class ManifestError(ValueError):
    """A ``manifest.json`` that is not one this version can read."""


def _need(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
          where: str) -> Any:
    """``doc[key]``, checked to be of ``kind``."""
    value = doc[key]
    # bool is an int to Python, never a size or a count here.
    if not isinstance(value, kind) or (isinstance(value, bool)
                                       and bool not in _kinds(kind)):
        raise ManifestError(
            f"{where}: {key} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", list: "a list",
             dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def _missing(doc: Mapping[str, Any], keys: tuple[str, ...],
             where: str) -> None:
    absent = [k for k in keys if k not in doc]
    if absent:
        raise ManifestError(f"{where}: missing {', '.join(absent)}")


def _strings(doc: Mapping[str, Any], key: str,
             where: str) -> tuple[str, ...]:
    values = _need(doc, key, list, where)
    if not all(isinstance(v, str) for v in values):
        raise ManifestError(
            f"{where}: {key} must be a list of strings, got {values!r}")
    return tuple(values)


@dataclass(frozen=True)
class Product:
    """One file of the product set.

    Attributes
    ----------
    id : str
        Stable identifier (``summary``, ``catalogue_fits``, ``psf_m``...):
        the UWS result id.
    file : str
        File name in the output directory.
    mime : str
        MIME type.
    size : int
        Size in bytes.
    description : str
        One line for a person.
    """

    id: str
    file: str
    mime: str
    size: int
    description: str

    #: The keys of a product in ``manifest.json``.
    KEYS: ClassVar[tuple[str, ...]] = ("id", "file", "mime", "size",
                                       "description")

    def to_json(self) -> dict[str, Any]:
        """Return the product as a JSON object."""
        return {"id": self.id, "file": self.file, "mime": self.mime,
                "size": self.size, "description": self.description}

    @classmethod
    def from_json(cls, doc: Any, where: str = "product") -> Self:
        """Read a product back from `to_json`'s form.

        Raises
        ------
        ManifestError
            Not an object, a key missing, a value of the wrong type.
        """
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: an object expected, got {doc!r}")
        _missing(doc, cls.KEYS, where)
        size = _need(doc, "size", int, where)
        if size < 0:
            raise ManifestError(f"{where}: size must be >= 0, got {size}")
        return cls(id=_need(doc, "id", str, where),
                   file=_need(doc, "file", str, where),
                   mime=_need(doc, "mime", str, where), size=size,
                   description=_need(doc, "description", str, where))


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says: the image and its products.

    Attributes
    ----------
    image : str
        The assessed image's file name.
    qualityfits : str
        The qualityfits version that made the products.
    n_extensions : int
        CCDs in the image.
    failed_extensions : tuple of str
        Names of the CCDs that could not be assessed.
    flags : tuple of str
        The exposure's QA flags.
    products : tuple of Product
        Every product, in the order a client should see them.
    """

    image: str
    qualityfits: str
    n_extensions: int
    failed_extensions: tuple[str, ...]
    flags: tuple[str, ...]
    products: tuple[Product, ...]

    #: The keys of ``manifest.json``.
    KEYS: ClassVar[tuple[str, ...]] = ("version", "image", "qualityfits",
                             "n_extensions", "failed_extensions", "flags",
                             "products")

    def product(self, product_id: str) -> Product | None:
        """Return the product ``product_id`` (None if there is none)."""
        return next((p for p in self.products if p.id == product_id), None)

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as the JSON object of ``manifest.json``."""
        return {
            "version": FORMAT_VERSION,
            "image": self.image,
            "qualityfits": self.qualityfits,
            "n_extensions": self.n_extensions,
            "failed_extensions": list(self.failed_extensions),
            "flags": list(self.flags),
            "products": [p.to_json() for p in self.products],
        }

    @classmethod
    def from_json(cls, doc: Any, where: str = MANIFEST_NAME) -> Self:
        """Read a manifest back from `to_json`'s form.

        Parameters
        ----------
        doc : object
            The parsed JSON.
        where : str
            Named in error messages (the file).

        Raises
        ------
        ManifestError
            Not an object, another format version, a key missing, a value
            of the wrong type.
        """
        if not isinstance(doc, dict):
            raise ManifestError(
                f"{where}: a JSON object expected, got "
                f"{type(doc).__name__}")
        if "version" not in doc:
            raise ManifestError(
                f"{where}: no format version (a manifest of qualityfits "
                f"before format {FORMAT_VERSION}?)")
        if doc["version"] != FORMAT_VERSION or isinstance(doc["version"],
                                                          bool):
            raise ManifestError(
                f"{where}: format version {doc['version']!r}, this "
                f"qualityfits reads version {FORMAT_VERSION}")
        _missing(doc, cls.KEYS, where)
        n_extensions = _need(doc, "n_extensions", int, where)
        if n_extensions < 0:
            raise ManifestError(
                f"{where}: n_extensions must be >= 0, got {n_extensions}")
        products = _need(doc, "products", list, where)
        return cls(
            image=_need(doc, "image", str, where),
            qualityfits=_need(doc, "qualityfits", str, where),
            n_extensions=n_extensions,
            failed_extensions=_strings(doc, "failed_extensions", where),
            flags=_strings(doc, "flags", where),
            products=tuple(Product.from_json(p, f"{where}: products[{i}]")
                           for i, p in enumerate(products)),
        )

    def write(self, path: str | Path) -> Path:
        """Write ``path`` atomically (a reader sees the old or the new).

        Returns
        -------
        Path
            The file written.
        """
        target = Path(path)
        text = json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """Read a ``manifest.json``.

        Raises
        ------
        OSError
            The file cannot be read.
        ManifestError
            Not UTF-8 JSON, or not a manifest of format `FORMAT_VERSION`
            (see `from_json`).
        """
        where = str(path)
        raw = Path(path).read_bytes()
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{where}: not JSON: {exc}") from None
        return cls.from_json(doc, where)
