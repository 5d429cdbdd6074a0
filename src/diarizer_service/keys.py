"""API key administration: ``python -m diarizer_service.keys create|list|revoke``.

Uses the configured backend (DIARIZER_BACKEND=aws with DIARIZER_KEYS_TABLE, or local with
DIARIZER_DATA_DIR). `create` prints the key and its webhook signing secret once: only hashes are stored
for the key, so a lost key cannot be shown again (create a new one and revoke the old one).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from diarizer_service.auth import AmbiguousKeyId, ApiKey, create_key, list_keys, revoke_by_secret, revoke_key
from diarizer_service.backends import create_backends
from diarizer_service.settings import load_settings
from diarizer_service.voiceprints import delete_all


def _describe(key: ApiKey) -> dict:
    return {"key_id": key.key_id, "name": key.name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created_at)),
            "status": "active" if key.active else "revoked"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diarizer_service.keys", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key (shown once)")
    create.add_argument("--name", default="", help="a label for the key, e.g. the customer")
    commands.add_parser("list", help="list keys (ids and status, never secrets)")
    revoke = commands.add_parser("revoke", help="revoke a key by its key id (or by the key, read from stdin)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("key_id", nargs="?")
    # The key itself singles out one of two keys made before ids were 64-bit that share an id. From stdin, never
    # argv: command lines are visible to every user of the machine (ps) and kept in shell history.
    which.add_argument("--api-key-stdin", action="store_true", help="read the key to revoke from stdin")
    args = parser.parse_args(argv)

    backends = create_backends(load_settings())
    store = backends.keys
    if args.command == "create":
        new = create_key(store, args.name)
        out = {**_describe(new.record), "api_key": new.api_key, "webhook_secret": new.record.webhook_secret}
        if args.json:
            print(json.dumps(out))
        else:
            print(f"key id:         {new.record.key_id}\napi key:        {new.api_key}\n"
                  f"webhook secret: {new.record.webhook_secret}\n"
                  "Store both now: they are not shown again.")
        return 0
    if args.command == "list":
        keys = [_describe(key) for key in list_keys(store)]
        if args.json:
            print(json.dumps(keys))
        else:
            for key in keys:
                print(f"{key['key_id']}  {key['status']:<8} {key['created_at']}  {key['name']}")
        return 0
    if backends.voiceprints is None:
        print("set DIARIZER_VOICEPRINTS_TABLE (the stack's VoiceprintsTableName output): revoking a key also deletes "
              "its voiceprints", file=sys.stderr)
        return 2
    try:
        revoked = revoke_by_secret(store, sys.stdin.read()) if args.api_key_stdin else revoke_key(store, args.key_id)
    except AmbiguousKeyId as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if revoked is None:
        print("no such key" if args.api_key_stdin else f"no key with id {args.key_id!r}", file=sys.stderr)
        return 1
    # Voiceprints are biometric data kept only for their key: a revoked key's are deleted with it.
    removed = delete_all(backends, revoked)
    print(json.dumps({**_describe(revoked), "voiceprints_deleted": removed}) if args.json
          else f"revoked {revoked.key_id} ({removed} voiceprints deleted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
