"""kombu's filesystem transport, with no broker file ever seen half-written.

kombu 5.7's filesystem Channel (kombu/transport/filesystem.py) writes files in place and trusts
an advisory lock that its readers do not all take:

- `_put` opens the message file `'wb'` (an empty `*.msg` now exists), then locks, then writes;
  `_get` takes no lock: it lists the folder, moves the file away, reads it, deletes it and only
  then parses it. A consumer polling in that window reads b"" or half a message, the
  JSONDecodeError escapes `drain_events` and Celery's consumer dies ("Unrecoverable error"),
  with the message already deleted.
- `_queue_bind` checks `exists()`, then opens a new exchange table `'wb'` (empty, before its
  lock): a concurrent `get_table` (every publish) or `_queue_bind` reads b"" and fails the same
  way, and two binders creating the table at once truncate each other's binding away.

Here every file is written whole under a temporary name in a staging folder on the same
filesystem, then `os.replace`d into place (atomic on POSIX): a reader finds no file or the whole
file. A consumer claims a message by renaming it into the staging folder, so exactly one consumer
gets it; a file that still does not parse is moved to a rejected folder with one warning, and
consumption goes on. Exchange tables are rewritten under one lock on the control folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from time import monotonic_ns
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    """Filesystem channel whose files appear whole; options as kombu's, plus `staging_folder`
    (temporary files, same filesystem as the queue) and `rejected_folder` (unreadable messages).
    """

    @cached_property
    def staging_folder(self) -> Path:
        default = Path(self.data_folder_out).parent / "staging"
        return _folder(self.transport_options.get("staging_folder") or default)

    @cached_property
    def rejected_folder(self) -> Path:
        default = Path(self.data_folder_in).parent / "rejected"
        return _folder(self.transport_options.get("rejected_folder") or default)

    # kombu's own override renames AbstractChannel's `message`; this keeps kombu's signature.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put `payload` onto `queue`: staged, then renamed into the queue folder."""
        # kombu's name (`<time>_<uuid>.<queue>.msg`) with the time in nanoseconds, zero-padded:
        # names sort in arrival order past a change in digit count, and messages put within one
        # millisecond (kombu's unit, where the uuid decided) keep theirs.
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        try:
            self._write_whole(Path(self.data_folder_out) / name, dumps(payload))
        except OSError as error:
            raise ChannelError(f"Cannot add file {name!r} to the queue folder") from error

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """Take the oldest readable message of `queue`; raise Empty when there is none."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = self.staging_folder / name
            try:
                os.rename(Path(self.data_folder_in) / name, claimed)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            except OSError as error:  # e.g. EXDEV: the staging folder is on another filesystem
                raise ChannelError(f"Cannot claim {name!r} from the queue folder") from error
            message = self._parsed(claimed)
            if message is not None:
                return message
        raise Empty()

    def _parsed(self, claimed: Path) -> dict[str, Any] | None:
        """The claimed message, consumed; None (the file moved aside) when it is not one."""
        try:
            payload = claimed.read_bytes()
            try:
                message = loads(payload)
            except ValueError as error:  # UnicodeDecodeError included
                message, reason = None, f"not JSON ({error})"
            else:
                reason = f"a JSON {type(message).__name__}, not a message"
            if not isinstance(message, dict):
                rejected = self.rejected_folder / claimed.name
                os.replace(claimed, rejected)
                log.warning("broker message %s is %s; moved to %s", claimed.name, reason, rejected)
                return None
            if self.store_processed:
                shutil.move(claimed, _folder(self.processed_folder) / claimed.name)
            else:
                claimed.unlink()
        except OSError as error:
            raise ChannelError(f"Cannot read file {str(claimed)!r} from queue.") from error
        return message

    def get_table(self, exchange: str) -> list[Any]:
        try:
            return list(super().get_table(exchange))
        except (ValueError, TypeError) as error:  # a recoverable channel error, not a dead worker
            raise ChannelError(f"Unreadable exchange table for {exchange!r}: {error}") from error

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._tables_locked():
            table = self.get_table(exchange)
            if binding not in table:
                self._write_table(exchange, [binding, *table])

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str,
                *args: Any, **kwargs: Any) -> None:
        self._purge(queue)  # what virtual.Channel._delete does; kombu's own rewrite is skipped
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._tables_locked():
            table = self.get_table(exchange)
            if binding in table:
                self._write_table(exchange, [entry for entry in table if entry != binding])

    def _write_table(self, exchange: str, table: list[Any]) -> None:
        file = self._exchange_file(exchange)
        try:
            self._write_whole(file, dumps(table))
        except OSError as error:
            raise ChannelError(f"Cannot write {file}") from error

    @contextlib.contextmanager
    def _tables_locked(self) -> Iterator[None]:
        """Serialise read-modify-write of exchange tables across processes (one lock for all)."""
        folder = _folder(self.control_folder)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # releases the lock

    def _write_whole(self, target: Path, text: str) -> None:
        staged = self.staging_folder / f"{uuid.uuid4()}.part"
        try:
            # O_EXCL on a fresh name; 0o666 less the umask, the mode kombu's open() gives.
            descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(descriptor, "wb") as file:
                file.write(text.encode())
                file.flush()
                # On disk before the rename: after a crash, a renamed-but-empty file is the
                # half-written message this module exists to prevent.
                os.fsync(file.fileno())
            os.replace(staged, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()


class Transport(filesystem.Transport):
    """kombu's filesystem transport with `Channel` above; selected with
    `Connection("filesystem://", transport=Transport)` (Celery: `broker_transport`)."""

    Channel = Channel
    # The URL carries nothing (the folders are transport options): keep it as given, so logs
    # and the worker banner still say `filesystem://` rather than this class's path.
    can_parse_url = True

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        return uri


def _folder(path: str | Path) -> Path:
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
