"""Where results go and studies come from: ``dicomweb+http(s)://[user:password@]host[:port]/path`` or
``dimse://AET@host:port``.

A destination's ``str()`` and ``repr()`` never contain the password; ``name`` is the key used in delivery status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default character repertoire, no backslash


class DestinationError(ValueError):
    """A destination string cannot be used; the message says which part and the expected form."""


def check_ae_title(value: str, what: str = "AE title") -> str:
    """A valid AE title (1-16 characters, no backslash or control characters, not only spaces)."""
    title = value.strip()
    if not title or not _AE_TITLE.match(title):
        raise DestinationError(
            f"{what} {value!r} is not valid: use 1 to 16 printable ASCII characters without a backslash"
        )
    return title


@dataclass(frozen=True)
class DicomWebDestination:
    """A DICOMweb origin server (base URL of its studies/ resources), with optional HTTP basic credentials."""

    base_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        user = f"{self.username}@" if self.username else ""
        scheme, rest = self.base_url.split("://", 1)
        return f"dicomweb+{scheme}://{user}{rest}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password or "") if self.username else None

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class DimseDestination:
    """A DICOM application entity reached by DIMSE (C-STORE, C-GET, C-MOVE)."""

    ae_title: str
    host: str
    port: int

    @property
    def name(self) -> str:
        return f"dimse://{self.ae_title}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.name


Destination = DicomWebDestination | DimseDestination


def parse_destination(text: str) -> Destination:
    """Parse one destination; DestinationError (without the password) when it is malformed."""
    text = text.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("dicomweb+http", "dicomweb+https"):
        parts = urlsplit(text)
        if not parts.hostname:
            raise DestinationError(f"destination {_redact(text)!r} has no host; expected {scheme}://host:port/path")
        try:
            port = parts.port
        except ValueError:
            raise DestinationError(f"destination {_redact(text)!r} has an invalid port") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{host}:{port}" if port else host
        base = f"{scheme.removeprefix('dicomweb+')}://{netloc}{parts.path.rstrip('/')}"
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return DicomWebDestination(base, username, password)
    if scheme == "dimse":
        match = re.fullmatch(r"dimse://([^@]+)@([^:/@]+|\[[0-9a-fA-F:]+\]):(\d{1,5})/?", text, re.IGNORECASE)
        if not match or not 0 < int(match.group(3)) < 65536:
            raise DestinationError(f"destination {text!r} is malformed; expected dimse://AET@host:port")
        return DimseDestination(check_ae_title(match.group(1)), match.group(2).strip("[]"), int(match.group(3)))
    raise DestinationError(
        f"destination {_redact(text)!r} has an unknown scheme; use dicomweb+http://user:password@host:port/path "
        "or dimse://AET@host:port"
    )


def parse_destinations(text: str | None) -> list[Destination]:
    """Comma-separated destinations (empty or None: none); duplicates are an error."""
    found: list[Destination] = []
    for item in (text or "").split(","):
        if item.strip():
            destination = parse_destination(item)
            if any(d.name == destination.name for d in found):
                raise DestinationError(f"destination {destination.name} is listed twice")
            found.append(destination)
    return found


def _redact(text: str) -> str:
    """``text`` with any ``user:password@`` reduced to ``user:***@``."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", text)
