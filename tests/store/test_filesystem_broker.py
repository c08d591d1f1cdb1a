"""The embedded broker (store/filesystem_broker.py): real producer and consumer processes on one
broker folder; every file a reader can see is whole, every message arrives exactly once."""

import json
import logging
import multiprocessing
import threading
import time
import uuid
from collections import Counter
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Exchange, Queue

from store import filesystem_broker, queue
from store.settings import Settings
from worker.app import create_celery_app

QUEUE = "stress"
PRODUCERS, PER_PRODUCER = 4, 60
BINDERS, EXCHANGES = 6, 300  # each exchange table is created by whichever binder comes first
DEADLINE_S = 120.0  # a hang guard only: a correct run finishes far sooner

fork = multiprocessing.get_context("fork")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", broker_url="filesystem://")


def produce(settings: Settings, producer: int) -> None:
    with queue.broker_connection(settings) as connection:
        simple = connection.SimpleQueue(QUEUE)
        for seq in range(PER_PRODUCER):
            # Sizes up to 256 KiB: a write that is not atomic has room to be seen half-done.
            pad = "x" * ((producer * 7919 + seq * 104729) % (256 * 1024))
            simple.put({"producer": producer, "seq": seq, "pad": pad})


def consume(settings: Settings, received: "multiprocessing.Queue[tuple[int, int]]", stop: Event) -> None:
    with queue.broker_connection(settings) as connection:
        simple = connection.SimpleQueue(QUEUE)
        while not stop.is_set():
            try:
                message = simple.get_nowait()
            except simple.Empty:
                stop.wait(0.005)
                continue
            message.ack()
            received.put((message.payload["producer"], message.payload["seq"]))


def collect(
    received: "multiprocessing.Queue[tuple[int, int]]", count: int, consumers: list[Any]
) -> list[tuple[int, int]]:
    """`count` deliveries; fewer when every consumer died (a crash fails the test, not a hang)."""
    got: list[tuple[int, int]] = []
    deadline = time.monotonic() + DEADLINE_S  # not a Timer thread: it would hold the process at exit
    while len(got) < count and time.monotonic() < deadline:
        try:
            got.append(received.get(timeout=0.5))
        except Empty:
            if not any(process.is_alive() for process in consumers):
                break
    return got


def peek(folder: Path, stop: threading.Event, unreadable: list[str]) -> None:
    """Read every message file in sight, as `pending_job_ids` does; note any that is not JSON."""
    while not stop.is_set():
        for path in folder.glob("*.msg"):
            try:
                json.loads(path.read_bytes())
            except FileNotFoundError:
                continue  # claimed by a consumer meanwhile
            except ValueError:
                unreadable.append(path.name)


def test_concurrent_producers_and_consumers_deliver_each_message_once_and_whole(
    settings: Settings,
) -> None:
    folder = settings.broker_dir / "queue"
    received: multiprocessing.Queue[tuple[int, int]] = fork.Queue()
    stop_consumers = fork.Event()
    consumers = [fork.Process(target=consume, args=(settings, received, stop_consumers)) for _ in range(2)]
    producers = [fork.Process(target=produce, args=(settings, n)) for n in range(PRODUCERS)]
    stop_peeking, unreadable = threading.Event(), list[str]()
    peeker = threading.Thread(target=peek, args=(folder, stop_peeking, unreadable))
    queue.celery_config(settings)  # makes the folders the peeker watches
    peeker.start()
    for process in consumers + producers:
        process.start()
    try:
        got = Counter(collect(received, PRODUCERS * PER_PRODUCER, consumers))
    finally:
        stop_consumers.set()
        stop_peeking.set()
        for process in consumers + producers:
            process.join(timeout=DEADLINE_S)
        peeker.join()

    assert [process.exitcode for process in producers + consumers] == [0] * (PRODUCERS + 2)
    assert got == Counter((n, seq) for n in range(PRODUCERS) for seq in range(PER_PRODUCER))
    assert unreadable == []
    assert received.empty()  # nothing delivered twice after the last expected message
    leftovers = {name: list((settings.broker_dir / name).iterdir()) for name in ("queue", "staging", "rejected")}
    assert leftovers == {"queue": [], "staging": [], "rejected": []}


def test_a_malformed_message_file_is_set_aside_and_the_valid_ones_still_delivered(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    folder = settings.broker_dir / "queue"
    queue.celery_config(settings)  # makes the folders
    # Named to sort before any real message: the consumer meets them first.
    bad = {f"{0:020d}_{uuid.uuid4()}.{QUEUE}.msg": content for content in (b"", b'{"body": "x', b"[1, 2]")}
    for name, content in bad.items():
        (folder / name).write_bytes(content)

    delivered: list[Any] = []
    with queue.broker_connection(settings) as connection:
        simple = connection.SimpleQueue(QUEUE)
        for n in range(3):
            simple.put({"n": n})
        with caplog.at_level(logging.WARNING, logger=filesystem_broker.__name__):
            while True:
                try:
                    message = simple.get_nowait()
                except simple.Empty:
                    break
                message.ack()
                delivered.append(message.payload)

    assert delivered == [{"n": 0}, {"n": 1}, {"n": 2}]
    rejected = settings.broker_dir / "rejected"
    assert {path.name: path.read_bytes() for path in rejected.iterdir()} == bad  # kept, not lost
    warnings = [record.getMessage() for record in caplog.records]
    assert sorted(name for name in bad for warning in warnings if name in warning) == sorted(bad)  # once each
    assert list(folder.iterdir()) == []


def bind(settings: Settings, binder: int, start: Barrier) -> None:
    with queue.broker_connection(settings) as connection:
        channel = connection.default_channel
        start.wait()
        for n in range(EXCHANGES):
            Queue(f"q{binder}", Exchange(f"fan{n}", type="fanout"))(channel).declare()


def read_tables(channel: Any, stop: threading.Event, errors: list[BaseException]) -> None:
    while not stop.is_set():
        for n in range(EXCHANGES):
            try:
                channel.get_table(f"fan{n}")
            except Exception as error:
                errors.append(error)


def test_concurrent_bindings_are_all_kept_and_every_exchange_table_always_readable(
    settings: Settings,
) -> None:
    start = fork.Barrier(BINDERS)
    binders = [fork.Process(target=bind, args=(settings, n, start)) for n in range(BINDERS)]
    with queue.broker_connection(settings) as connection:
        channel = connection.default_channel
        stop, errors = threading.Event(), list[BaseException]()
        reader = threading.Thread(target=read_tables, args=(channel, stop, errors))
        reader.start()
        for process in binders:
            process.start()
        for process in binders:
            process.join(timeout=DEADLINE_S)
        stop.set()
        reader.join()
        tables = {n: sorted(entry.queue for entry in channel.get_table(f"fan{n}")) for n in range(EXCHANGES)}

    assert [process.exitcode for process in binders] == [0] * BINDERS
    assert errors == []
    assert tables == {n: [f"q{binder}" for binder in range(BINDERS)] for n in range(EXCHANGES)}
    assert list((settings.broker_dir / "staging").iterdir()) == []


def test_every_filesystem_connection_uses_the_atomic_transport_under_the_users_url(
    settings: Settings,
) -> None:
    connections = [
        queue.make_celery(settings).connection_for_write(),  # the API's producer
        create_celery_app(settings).connection_for_read(),  # the training worker
        create_celery_app(settings, recluster=True).connection_for_read(),  # its companion
        queue.broker_connection(settings),  # broker_error (preflight, /ready) and tests
    ]
    assert [type(connection.transport) for connection in connections] == [filesystem_broker.Transport] * 4
    assert {connection.as_uri() for connection in connections} == {"filesystem://"}
    assert queue.broker_error(settings) is None


def test_other_brokers_keep_the_transport_of_their_scheme() -> None:
    assert queue.broker_transport(Settings(broker_url="redis://localhost:6379/0")) is None
