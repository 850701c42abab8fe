"""Live reload on SIGHUP: apply what may change while running, name what needs a restart.

Nebula style: each role registers one callback per config key (or section) it can apply
live.  On SIGHUP (``service.serve_until_stopped``) the role re-reads its config file and
hands the result to :meth:`Reloader.apply`, which compares the running and the new settings field by field
(generic over the config dataclasses, never per key), runs each callback whose key
changed, and logs every other changed key as "needs a restart: KEY".  The running
settings then hold exactly what is in effect: applied keys take their new value,
the rest keep the old one, so a restart-only change is reported again at the next
reload until the process is restarted.

Whether a key *may* change live is the ``live`` flag of its config option
(:func:`meshvpn.config.option`); a live key no callback handles still needs a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from meshvpn import service
from meshvpn.errors import MeshError

log = logging.getLogger("meshvpn.reload")


@dataclass(frozen=True)
class ConfigChange:
    """One config key whose value differs between the running and the newly read settings."""

    key: str
    """Dotted key path, as in the config file (``paths.keepalive``); a list is one key (``relays``)."""
    old: Any
    new: Any
    live: bool
    """The key's option says a reload may apply it (inherited from its section)."""


def config_changes(old: Any, new: Any, prefix: str = "", live_section: bool = False) -> list[ConfigChange]:
    """Every leaf key that differs between two settings dataclasses of the same schema."""
    changes = []
    for spec in dataclasses.fields(old):
        before, after = getattr(old, spec.name), getattr(new, spec.name)
        if before == after:
            continue
        key, live = prefix + spec.name, live_section or spec.metadata.get("live", False)
        if dataclasses.is_dataclass(before):
            changes += config_changes(before, after, key + ".", live)
        else:
            changes.append(ConfigChange(key, before, after, live))
    return changes


def with_value(settings: Any, key: str, value: Any) -> Any:
    """A copy of ``settings`` with the dotted ``key`` set to ``value``."""
    name, _, rest = key.partition(".")
    if rest:
        value = with_value(getattr(settings, name), rest, value)
    return dataclasses.replace(settings, **{name: value})


@dataclass
class ReloadReport:
    """What one reload did, for the log and for tests."""

    applied: list[str] = field(default_factory=list)
    """Keys now in effect with their new value."""
    needs_restart: list[str] = field(default_factory=list)
    """Keys that changed in the file but keep their old value until a restart."""


def _covers(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


class Reloader:
    """The settings a role runs with, and the callbacks that apply live changes to it.

    The log level is registered from the start: every role has ``log.level``.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        """What is in effect now (applied live changes included)."""
        self._callbacks: list[tuple[str, Callable[[Any], None]]] = []
        self.on_change("log.level", lambda new: service.set_level(new.log.level))

    def on_change(self, key: str, apply: Callable[[Any], None]) -> None:
        """Call ``apply(settings)`` once per reload in which a live ``key`` (or one under it) changed.

        ``settings`` is the running settings with just those changes made, so a callback
        never sees a value that only a restart may bring.
        """
        self._callbacks.append((key, apply))

    def apply(self, new: Any) -> ReloadReport:
        """Apply what can change live from ``new``; log what was applied and what needs a restart."""
        report = ReloadReport()
        changes = config_changes(self.settings, new)
        for prefix, callback in self._callbacks:
            covered = [change for change in changes if change.live and _covers(prefix, change.key)]
            if not covered:
                continue
            candidate = self.settings
            for change in covered:
                candidate = with_value(candidate, change.key, change.new)
            try:
                callback(candidate)
            except MeshError as exc:
                log.error("cannot apply %s: %s", prefix, exc)
                continue
            self.settings = candidate
            report.applied += [change.key for change in covered if change.key not in report.applied]
        for change in changes:
            if change.key not in report.applied:
                report.needs_restart.append(change.key)
                log.warning("needs a restart: %s", change.key)
        if report.applied:
            log.info("reloaded: %s", ", ".join(f"{c.key}={c.new}" for c in changes if c.key in report.applied))
        elif not changes:
            log.info("reloaded: nothing changed")
        return report

