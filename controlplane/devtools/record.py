"""How other commands find a running `controlplane dev`: once its database is ready, the dev
stack writes `dev.json` in its home with where its database, Temporal and API are, and removes it
when it stops. The CLI's database commands use it when DATABASE_URL is not set.

The file is 0600 (the database URL may carry a password) and replaced atomically, so a reader
never sees half of it. A file whose pid no longer runs is left by a dev that was killed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from controlplane.devtools.supervise import pid_alive

RECORD_FILE = "dev.json"
# In the command line of `controlplane dev` however it was started (console script or -m).
DEV_MARKER = "controlplane"


class DevRecordError(Exception):
    """A one-line reason the record cannot be used: unreadable, or its dev no longer runs."""


@dataclass(frozen=True)
class DevRecord:
    pid: int
    database_url: str
    temporal_address: str
    api_url: str


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, replacing it atomically."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # it may have existed with other modes
        handle.write(text + "\n")
    os.replace(partial, path)


def write_record(home: Path, record: DevRecord) -> None:
    write_private(home / RECORD_FILE, json.dumps(asdict(record)))


def remove_record(home: Path) -> None:
    (home / RECORD_FILE).unlink(missing_ok=True)


def read_record(home: Path) -> DevRecord | None:
    """The record of the dev stack running in `home`; None if there is none. Raises
    DevRecordError if the file cannot be read or its dev is no longer running."""
    path = home / RECORD_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DevRecordError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
        record = DevRecord(
            pid=int(data["pid"]),
            database_url=str(data["database_url"]),
            temporal_address=str(data["temporal_address"]),
            api_url=str(data["api_url"]),
        )
    except (ValueError, TypeError, KeyError):
        raise DevRecordError(f"{path} is not a dev stack record") from None
    if not pid_alive(record.pid, DEV_MARKER):
        raise DevRecordError(
            f"the dev stack in {home} (pid {record.pid}) is not running ({path} is left from "
            "a run that was killed)"
        )
    return record
