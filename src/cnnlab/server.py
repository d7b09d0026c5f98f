"""``cnnlab server``: one MLflow tracking server that a team's machines log to.

    cnnlab server                                   # PostgreSQL store, artifacts in ./mlartifacts
    cnnlab server -S server.host=0.0.0.0 -S server.allowed_hosts=[gpu1.lab:5000]
    cnnlab server --check                           # create the database, check the pools, then stop

The backend store is any SQLAlchemy URL (``server.backend_store``); a PostgreSQL database is
created when missing, here, once, before MLflow migrates it and starts its workers. Artifacts
are proxied (``--serve-artifacts``): clients upload and download through the server, so they
need neither the artifact folder nor S3 credentials. Every server worker process opens its
own SQLAlchemy engines, so the pools are sized against PostgreSQL's ``max_connections`` before
anything starts. Clients then run any command with ``-S tracking.uri=http://HOST:PORT`` or
``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, ServerConfig

log = logging.getLogger(__name__)

# SQLAlchemy engines one MLflow 3.17 server worker opens on the backend store: the tracking
# store's and the model registry's (each class caches one engine per URL; seen in the server's
# log, one "Create SQLAlchemy engine" line each).
ENGINES_PER_WORKER = 2
# Processes beside the workers that hold connections of their own, counted like workers: the
# `mlflow server` parent (it migrates the schema and keeps its engines), MLflow's job runner
# and its huey consumer (each seen holding connections with `ss -tnp`).
HELPER_PROCESSES = 3
CONNECT_TIMEOUT_S = 5  # an unreachable PostgreSQL fails in seconds
MAINTENANCE_DATABASE = "postgres"  # where CREATE DATABASE is issued from
EXAMPLE_URL = "postgresql+psycopg2://USER@HOST:5432/DATABASE"  # psycopg2: SQLAlchemy 2.1's plain postgresql:// wants psycopg 3
LOCAL_ARTIFACTS = "mlartifacts"  # MLflow's own default folder name, already in .gitignore
# uvicorn kills a worker that misses a 5 s health check; on a busy 2-core machine a worker still
# importing MLflow missed it and was not replaced.
WORKER_HEALTHCHECK_S = 60


class ServerError(RuntimeError):
    """The server cannot start as configured; the message names the URL and the fix."""


@dataclass(frozen=True)
class ConnectionBudget:
    """PostgreSQL connections the server may open, against what the database allows."""

    processes: int  # server workers plus HELPER_PROCESSES
    per_process: int  # ENGINES_PER_WORKER x (pool_size + max_overflow)
    max_connections: int
    reserved: int  # superuser_reserved_connections (+ reserved_connections on PostgreSQL 16+)
    in_use: int  # other client connections open now (Optuna workers, another server, psql, ...)

    @property
    def needed(self) -> int:
        return self.processes * self.per_process

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved

    def describe(self, server: ServerConfig) -> str:
        return (f"{self.processes} processes ({server.workers} workers + {HELPER_PROCESSES} helpers) x "
                f"{ENGINES_PER_WORKER} engines x "
                f"({server.pool_size} pool_size + {server.max_overflow} max_overflow) = {self.needed} connections "
                f"at most; PostgreSQL allows {self.available} ({self.max_connections} max_connections - "
                f"{self.reserved} reserved), {self.in_use} in use now")


def shown(url: str) -> str:
    """``url`` with any password masked, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def parse_backend(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError as err:
        raise ConfigError(f"server.backend_store={url!r} is not a SQLAlchemy URL ({err}); e.g. "
                          f"{EXAMPLE_URL}") from err


def _engine(url, named=None):
    """A connection-per-use engine on ``url``; errors name ``named`` (the configured URL)."""
    import sqlalchemy

    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.get_backend_name() == "postgresql" else {}
    try:
        return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT",
                                        connect_args=connect_args)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise ServerError(f"no database driver for {shown(str(named or url))} ({err}). Fix: name an installed driver, "
                          f"e.g. {EXAMPLE_URL} (psycopg2 is installed with cnnlab)") from err


def _reason(err: Exception) -> str:
    """The database driver's first line about ``err`` (SQLAlchemy wraps it in ``orig``)."""
    return str(getattr(err, "orig", err)).strip().splitlines()[0]


def _unreachable(url, err: Exception) -> ServerError:
    return ServerError(
        f"cannot reach PostgreSQL for the MLflow store {shown(str(url))} ({_reason(err)}). Fix: start PostgreSQL there "
        f"(e.g. `sudo systemctl start postgresql`), or point the server at a reachable one with "
        f"-S server.backend_store={EXAMPLE_URL} (password in $PGPASSWORD or ~/.pgpass)")


def _cannot_create(url, err: Exception, step: str = "CREATE DATABASE") -> ServerError:
    return ServerError(f"cannot create the database {url.database!r} on {shown(str(url))}: {step} failed "
                       f"({_reason(err)}). "
                       f"Fix: create it yourself (`createdb {url.database}`) or grant CREATEDB to {url.username}")


def ensure_database(url) -> bool:
    """Create the PostgreSQL database ``url`` names unless it exists; True when created. An existing
    database is used as it is: a role that may connect to its own database only (as on many managed
    servers) never needs the maintenance database."""
    import sqlalchemy

    target = _engine(url)
    try:
        with target.connect():
            return False
    except sqlalchemy.exc.OperationalError as err:
        if "does not exist" not in str(err):
            raise _unreachable(url, err) from err
    finally:
        target.dispose()
    maintenance = _engine(url.set(database=MAINTENANCE_DATABASE), named=url)
    try:
        with maintenance.connect() as connection:
            exists = connection.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                        {"name": url.database}).first()
            if exists:
                return False
            quoted = maintenance.dialect.identifier_preparer.quote(url.database)
            try:
                connection.execute(sqlalchemy.text(f"CREATE DATABASE {quoted}"))
            except sqlalchemy.exc.ProgrammingError as err:  # another `cnnlab server` created it first
                if "already exists" not in str(err):
                    raise _cannot_create(url, err) from err
                return False
    except sqlalchemy.exc.OperationalError as err:  # the server answered above: this is about the maintenance db
        raise _cannot_create(url, err, f"connecting to the {MAINTENANCE_DATABASE!r} database to create it") from err
    finally:
        maintenance.dispose()
    log.info("created the PostgreSQL database %s for the MLflow store", url.database)
    return True


def connection_budget(url, server: ServerConfig) -> ConnectionBudget:
    """The server's worst-case connection count against the database's limits, read from it."""
    import sqlalchemy

    engine = _engine(url)
    try:
        with engine.connect() as connection:
            def setting(name: str) -> int:
                value = connection.execute(sqlalchemy.text("SELECT setting FROM pg_settings WHERE name = :n"),
                                           {"n": name}).scalar()
                return int(value or 0)

            in_use = connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()")).scalar()
            return ConnectionBudget(
                processes=server.workers + HELPER_PROCESSES, per_process=ENGINES_PER_WORKER * (server.pool_size + server.max_overflow),
                max_connections=setting("max_connections"),
                reserved=setting("superuser_reserved_connections") + setting("reserved_connections"),
                in_use=int(in_use))
    except sqlalchemy.exc.OperationalError as err:
        raise _unreachable(url, err) from err
    finally:
        engine.dispose()


def check_budget(budget: ConnectionBudget, server: ServerConfig) -> None:
    """Refuse pools that can never fit; warn when they fit only once other clients disconnect."""
    if budget.needed > budget.available:
        raise ServerError(
            f"the server's pools could exhaust PostgreSQL: {budget.describe(server)}. Fix: lower server.workers, "
            f"server.pool_size or server.max_overflow (e.g. -S server.workers=2), or raise max_connections "
            f"in postgresql.conf")
    if budget.needed > budget.available - budget.in_use:
        log.warning("the server fits only if other clients disconnect: %s", budget.describe(server))
    else:
        log.info("connections: %s", budget.describe(server))


def artifacts_destination(server: ServerConfig) -> str:
    """Where the server keeps artifacts: a local folder (created) or a bucket URI."""
    from .runtime import project_root  # imports torch: only when a local folder is used

    destination = server.artifacts_destination
    if "://" in destination:
        if destination.startswith("s3://") and importlib.util.find_spec("boto3") is None:
            raise ServerError(f"server.artifacts_destination={destination} needs boto3. Fix: pip install boto3")
        return destination  # credentials and endpoint: AWS_* and MLFLOW_S3_ENDPOINT_URL, as MLflow reads them
    folder = Path(destination) if destination else project_root() / LOCAL_ARTIFACTS
    folder = folder if folder.is_absolute() else project_root() / folder
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def pool_environment(server: ServerConfig) -> dict[str, str]:
    """The environment variables through which MLflow sizes each engine's pool."""
    env = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(server.pool_size),
           "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(server.max_overflow)}
    if server.pool_recycle:  # MLflow treats 0 as unset: connections are then never recycled
        env["MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE"] = str(server.pool_recycle)
    return env


def server_command(server: ServerConfig, backend: str, artifacts: str) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
               "--artifacts-destination", artifacts, "--host", server.host, "--port", str(server.port),
               "--workers", str(server.workers),
               "--uvicorn-opts", f"--timeout-worker-healthcheck {WORKER_HEALTHCHECK_S}"]
    if server.allowed_hosts:
        # MLflow's default accepts only localhost: with an explicit list it must be named again.
        hosts = ["localhost", f"localhost:{server.port}", "127.0.0.1", f"127.0.0.1:{server.port}",
                 *server.allowed_hosts]
        command += ["--allowed-hosts", ",".join(dict.fromkeys(hosts))]
    return command


def prepare_server(server: ServerConfig) -> tuple[list[str], dict[str, str]]:
    """Everything before the server starts: the database, the pool check, the artifact folder.
    Returns the command and the extra environment that start it."""
    url = parse_backend(server.backend_store)
    if url.get_backend_name() == "postgresql":
        if not url.database:
            raise ConfigError(f"server.backend_store={shown(server.backend_store)} names no database; "
                              f"add one, e.g. {EXAMPLE_URL}")
        ensure_database(url)
        check_budget(connection_budget(url, server), server)
    else:
        log.info("backend %s: no database created and no connection check (PostgreSQL only)",
                 url.get_backend_name())
    command = server_command(server, server.backend_store, artifacts_destination(server))
    return command, pool_environment(server)


def serve(server: ServerConfig, check_only: bool = False) -> None:
    """Prepare, then become ``mlflow server`` (exec: signals reach it directly; Ctrl-C stops it)."""
    command, env = prepare_server(server)
    where = f"http://{'127.0.0.1' if server.host in ('0.0.0.0', '::') else server.host}:{server.port}"
    shown_command = [shown(word) if word == server.backend_store else word for word in command]
    print(f"store {shown(server.backend_store)}; artifacts {command[command.index('--artifacts-destination') + 1]}",
          flush=True)
    if check_only:
        print("checked; start it with `cnnlab server` (same settings)")
        return
    print(f"serving at {where}: point commands at it with -S tracking.uri={where} "
          f"(or export MLFLOW_TRACKING_URI={where})", flush=True)
    log.info("running %s", " ".join(shown_command))
    os.execve(command[0], command, {**os.environ, **env})
