"""What the package ships besides code: the SE 79/SE/2019 policy and the templates
``milter init`` writes.

They live inside the package so that an installed wheel (or the Debian package's
virtual environment) carries them: nothing depends on a checkout of the repository.
A gateway configuration names the shipped policy as ``shipped:se-79-2019`` rather than
by a path into site-packages, because that path changes whenever the environment is
rebuilt or Python is upgraded, and a configuration is meant to outlive both.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PREFIX = "shipped:"
"""How a configuration's ``policy:`` entry names a policy shipped with the package."""

POLICIES = ("se-79-2019",)


class UnknownShippedPolicy(LookupError):
    """A ``shipped:`` reference to a policy the package does not carry."""


def directory() -> Path:
    """The package's data directory, as a real path (the package is never zipped: the
    policy loader reports errors by file, line and column and needs a file to name)."""
    return Path(str(resources.files(__name__)))


def policy_path(name: str) -> Path:
    """The file of the shipped policy ``name`` (``se-79-2019``, with or without ``.yaml``)."""
    stem = name.removesuffix(".yaml")
    if stem not in POLICIES:
        raise UnknownShippedPolicy(
            f"no shipped policy {name!r}; the package ships: {', '.join(POLICIES)}"
        )
    return directory() / f"{stem}.yaml"


def resolve(entry: str) -> str | None:
    """The file a ``policy:`` entry of the form ``shipped:NAME`` means, else ``None``."""
    if not entry.startswith(PREFIX):
        return None
    return str(policy_path(entry[len(PREFIX) :]))


def template(name: str) -> str:
    """The text of a template ``milter init`` renders (``gateway.yaml.in``, ...)."""
    return (directory() / name).read_text(encoding="utf-8")
