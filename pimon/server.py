"""Run the monitor process: open the store, serve the app, stop cleanly on signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from pimon import __version__
from pimon.monitor import Monitor, MonitorConfig
from pimon.parse import join_host_port
from pimon.store import Store, StoreError, default_db_path

log = logging.getLogger("pimon.monitor")

LOOPBACK = ("127.0.0.1", "::1", "localhost")
FULL_COLLECTION_EVERY_S = 300.0


def bind_host(config: MonitorConfig) -> str:
    """Return the host to bind: loopback when no token protects a public listen."""
    host = config.listen[0]
    if config.token or config.insecure or host in LOOPBACK:
        return host
    log.warning(
        "no token configured: listening on loopback only; set --token-file or pass --insecure"
    )
    return "::1" if ":" in host else "127.0.0.1"


def open_store(config: MonitorConfig) -> Store:
    """Open the history database, or raise StoreError with a clear reason."""
    store = Store(config.db or default_db_path(), retention=config.retention)
    store.open()
    return store


def settle_garbage_collector() -> None:
    """Keep start-up objects out of collections and collect the young generation less often."""
    # Every full collection walks every tracked object; with thousands of
    # connections that stalled the loop 150-280 ms each second (bench/pushlevel.py
    # logs the pauses). Objects alive after start-up (modules, the app, restored
    # nodes) live to the end: freezing them spares that walk. A gen-0 threshold of
    # 50,000 net allocations keeps young collections rare but short.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def collect_garbage_periodically(loop: asyncio.AbstractEventLoop) -> None:
    """Run a full collection now and every few minutes."""
    # Cycles that outlived a young collection (a failed request, a closed stream)
    # would otherwise wait for thousands of them: this bounds how long they stay.
    gc.collect()
    loop.call_later(FULL_COLLECTION_EVERY_S, collect_garbage_periodically, loop)


async def serve(config: MonitorConfig, store: Store) -> None:
    """Run the monitor until SIGTERM or SIGINT."""
    from pimon.api import make_app
    from pimon.ingest import IngestSite

    monitor = Monitor(config, store)
    await monitor.start()
    runner = web.AppRunner(make_app(monitor), access_log=None, handle_signals=False)
    await runner.setup()
    site = IngestSite(runner, monitor, bind_host(config), config.listen[1])
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    host, port = sockets[0].getsockname()[:2] if sockets else config.listen
    datagrams = None
    if config.udp:
        from pimon.udp import listen

        assert config.token is not None  # checked at start: the HMAC needs it
        datagrams = await listen(monitor, config.token, host, port)
        log.info("taking signed heartbeat datagrams on udp %s", join_host_port(host, port))
    if config.insecure and not config.token:
        log.warning("--insecure: the API accepts writes from anyone who can reach it")
    log.info(
        "pimon monitor %s listening on http://%s (%d nodes, interval %ss, db %s)",
        __version__,
        join_host_port(host, port),
        len(monitor.membership.nodes),
        config.interval,
        store.path,
    )
    settle_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(FULL_COLLECTION_EVERY_S, collect_garbage_periodically, loop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        if datagrams is not None:
            datagrams.close()
        await runner.cleanup()
        await monitor.stop()


def run(config: MonitorConfig) -> int:
    """Run the monitor in the foreground; exit 2 when the database cannot be opened."""
    try:
        store = open_store(config)
    except StoreError as e:
        print(f"pimon monitor: error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        runner = asyncio.run
        try:
            import uvloop  # optional: a faster event loop when installed

            runner = uvloop.run
            log.info("using uvloop")
        except ModuleNotFoundError:
            pass
        runner(serve(config, store))
    finally:
        store.close()
        log.info("pimon monitor stopped")
    return 0
