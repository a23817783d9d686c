"""`infergate serve | worker | keys | usage | migrate`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from infergate.catalog import CatalogError
from infergate.config import SettingError, Settings
from infergate.errors import InfergateError


def _platform_parts(settings: Settings) -> tuple[Any, Any]:
    from infergate.auth import RevocationEpoch
    from infergate.storage.db import open_database

    return open_database(settings.database_url), RevocationEpoch(settings.data_dir)


def _announce_key_change(settings: Settings, epoch: Any) -> None:
    """Make running servers forget cached keys now: the epoch file (this host), Redis (others).
    A failed publish is retried a few times with backoff; past that, their key cache TTL covers it."""
    epoch.bump()
    if settings.redis_url:
        from infergate.revocation import publish_with_retry

        publish_with_retry(settings.redis_url)


def cmd_serve(args: argparse.Namespace) -> int:
    from infergate.server import run

    settings = Settings.from_env()
    try:
        catalog = settings.load_catalog()  # fail fast, before binding the port, naming the bad entry
    except CatalogError as exc:
        print(f"infergate: {exc}", file=sys.stderr)
        return 2
    from infergate.jobs.worker import check_settings as check_job_settings

    check_job_settings()  # INFERGATE_JOB_*, _WORKER_*, _WEBHOOK_*: a bad value exits 2 before binding
    from infergate.responses.mcp import default_settings as mcp_settings

    mcp_settings()  # INFERGATE_MCP_*: a bad value exits 2 before binding
    from infergate.storage.responses import StoreSettings

    StoreSettings.from_env()  # INFERGATE_RESPONSE_*, INFERGATE_BACKGROUND_*: likewise
    from infergate.web.session import PanelSettings

    PanelSettings.from_env()  # INFERGATE_PANEL_*: likewise
    if bool(args.tls_cert) != bool(args.tls_key):
        print("infergate: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if not settings.admin_token:
        print(
            "infergate: INFERGATE_ADMIN_TOKEN is not set: the management API (/v2) stays closed; "
            "use `infergate keys create NAME` to make keys",
            file=sys.stderr,
        )
    try:  # once, here, before workers fork: they find the schema at head and never race on it
        _migrate(settings)
    except Exception as exc:
        print(f"infergate: the database cannot be opened: {exc}", file=sys.stderr)
        return 1
    scheme = "https" if args.tls_cert else "http"
    print(
        f"infergate: serving {len(catalog)} models on {scheme}://{args.host}:{args.port} "
        f"({args.server}, {args.workers} worker(s))",
        file=sys.stderr,
    )
    run(args.host, args.port, args.server, args.workers, args.tls_cert, args.tls_key)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Standalone job workers: the same database (and media store) as the servers, no HTTP."""
    import asyncio
    import logging

    from infergate.jobs.worker import check_settings, run_standalone

    if args.concurrency is not None and args.concurrency < 1:
        print(f"infergate: --concurrency must be at least 1, got {args.concurrency}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    settings.load_catalog()  # a bad catalog stops the start here, naming the entry
    check_settings()  # a bad INFERGATE_JOB_*, _WORKER_*, _WEBHOOK_* value exits 2, naming the variable
    _migrate(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_standalone(settings, args.concurrency))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from infergate.storage.keys import KeyRepository

    settings = Settings.from_env()
    engine, epoch = _platform_parts(settings)
    repo = KeyRepository(engine)
    if args.action == "create":
        record, secret = repo.create(args.name, "cli")
        _announce_key_change(settings, epoch)
        print(json.dumps({k: v for k, v in record.info(secret).items() if k != "deleted_at"}))
    elif args.action == "list":
        records, total = repo.list(1, 1_000_000)
        if args.json:
            print(json.dumps([r.info() for r in records]))
        else:
            print(f"{'UUID':36}  {'NAME':24}  {'PREFIX':10}  CREATED")
            for r in records:
                print(f"{r.uuid:36}  {r.name[:24]:24}  {r.secret_prefix:10}  {r.info()['created_at']}")
            print(f"{total} key(s)")
    elif args.action == "rename":
        print(json.dumps(repo.rename(args.uuid, args.name).info()))
        _announce_key_change(settings, epoch)
    elif args.action == "regenerate":
        record, secret = repo.regenerate(args.uuid)
        _announce_key_change(settings, epoch)
        print(json.dumps(record.info(secret)))
    elif args.action == "delete":
        record = repo.delete(args.uuid)
        _announce_key_change(settings, epoch)
        print(json.dumps(record.info()))
    elif args.action == "limits":
        from infergate.limits.cli import run as limits_run

        print(
            json.dumps(
                limits_run(args, engine, settings.redis_url, lambda: _announce_key_change(settings, epoch))
            )
        )
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from infergate.reports import build_report, render_table
    from infergate.storage.ledger import LedgerRepository

    settings = Settings.from_env()
    engine, _ = _platform_parts(settings)
    report = build_report(LedgerRepository(engine), args.start, args.end, args.group_by)
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from infergate.model_pull import PullError, pull

    settings = Settings.from_env()
    try:
        result = pull(
            args.repo_id, settings.data_dir, file=args.file, model_id=args.id, revision=args.revision
        )
    except PullError as exc:
        print(f"infergate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary()))
    if result.hint:
        print(f"infergate: {result.hint}", file=sys.stderr)
    print("infergate: restart the server to serve it", file=sys.stderr)
    return 0


def _migrate(settings: Settings) -> None:
    from infergate.storage.db import open_database

    open_database(settings.database_url).dispose()


def cmd_migrate(_: argparse.Namespace) -> int:
    settings = Settings.from_env()
    _migrate(settings)
    print(f"database at head: {settings.database_url.split('@')[-1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from infergate.server import SERVERS

    parser = argparse.ArgumentParser(prog="infergate", description="Self-hosted serverless inference.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--server", choices=SERVERS, default="uvicorn", help="ASGI server (default uvicorn)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (each loads the models)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (pydo needs it)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a standalone job worker (async-invoke, background jobs)")
    worker.add_argument(
        "--concurrency", type=int, help="jobs run at once (default INFERGATE_WORKER_CONCURRENCY, 4)"
    )
    worker.set_defaults(func=cmd_worker)

    keys = sub.add_parser("keys", help="manage model access keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    create = ksub.add_parser("create", help="create a key; prints its secret once")
    create.add_argument("name")
    lst = ksub.add_parser("list", help="list keys")
    lst.add_argument("--json", action="store_true")
    rename = ksub.add_parser("rename", help="rename a key")
    rename.add_argument("uuid")
    rename.add_argument("name")
    regen = ksub.add_parser("regenerate", help="new secret; the old one stops working at once")
    regen.add_argument("uuid")
    delete = ksub.add_parser("delete", help="delete a key; it stops working at once")
    delete.add_argument("uuid")
    from infergate.limits.cli import add_arguments as limits_arguments

    limits_arguments(
        ksub.add_parser("limits", help="show or set a key's rate, concurrency and budget limits")
    )
    keys.set_defaults(func=cmd_keys)

    usage = sub.add_parser("usage", help="usage and cost from the ledger")
    usage.add_argument("--start", help="ISO 8601 or epoch seconds (default: 30 days before end)")
    usage.add_argument("--end", help="ISO 8601 or epoch seconds (default: now)")
    usage.add_argument("--group-by", choices=("key", "model", "day"), default="model")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=cmd_usage)

    models = sub.add_parser("models", help="fetch models into the data dir")
    msub = models.add_subparsers(dest="action", required=True)
    pull = msub.add_parser(
        "pull", help="download from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN) and add to the catalog"
    )
    pull.add_argument("repo_id", help="e.g. stabilityai/sd-turbo or bartowski/SmolLM2-360M-Instruct-GGUF")
    pull.add_argument("--file", help="the GGUF file or piper voice (.onnx) to take from the repo")
    pull.add_argument("--id", help="the catalog id to serve it as (default: from the file or repo name)")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    pull.set_defaults(func=cmd_models_pull)

    migrate = sub.add_parser("migrate", help="bring the database schema to the latest version")
    migrate.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Everything infergate creates in the data dir (database, spill files, epoch, caches) is
    # private to its user: files 0600, folders 0700. Server workers inherit the umask.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InfergateError as exc:
        print(f"infergate: {exc.message}", file=sys.stderr)
        return 1
    except (CatalogError, SettingError) as exc:
        print(f"infergate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
