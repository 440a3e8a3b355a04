"""``fleet keys generate``: every secret a fleet needs, as 0600 files in one 0700 directory.

Written: the fleet secret that signs weight versions, one Redis password per ACL role (fleet/acl.py) and the ACL
file built from them (hashes only, for infra's ``aclfile``), the CURVE server and client keypairs
(fleet/curve.py) and the dashboard token. Nothing secret is printed: only paths and the settings that use them.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from fleet import acl, curve

FLEET_SECRET = "fleet.secret"
DASHBOARD_TOKEN = "dashboard.token"
ACL_FILE = "redis-users.acl"

keys_app = typer.Typer(
    help="Fleet secrets: weight signing, Redis role passwords, ZeroMQ CURVE keys.", no_args_is_help=True
)


@keys_app.callback()
def keys() -> None:
    """Fleet secrets: weight signing, Redis role passwords, ZeroMQ CURVE keys."""  # a group even with one command


def planned_files(out: Path) -> list[Path]:
    names = [
        FLEET_SECRET,
        DASHBOARD_TOKEN,
        ACL_FILE,
        *(acl.ROLE_PASSWORD_FILE.format(role=r) for r in acl.ROLES),
        *(f"{n}.{part}" for n in (curve.SERVER, curve.CLIENT) for part in ("public", "secret")),
    ]
    return [out / n for n in names]


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="directory for the key files (created 0700)")],
    force: Annotated[bool, typer.Option("--force", help="overwrite existing key files")] = False,
    prefix: Annotated[str, typer.Option(help="replay key prefix the Redis ACL rules cover")] = "mf",
) -> None:
    """Generate the fleet secret, Redis role passwords and ACL file, CURVE keypairs and the dashboard token."""
    out = out.expanduser()
    existing = [p for p in planned_files(out) if p.exists()]
    if existing and not force:
        typer.echo(
            f"refusing to overwrite {len(existing)} key file(s) in {out} (first: {existing[0].name}); "
            "pass --force to replace them (running services keep the old ones until restarted)",
            err=True,
        )
        raise typer.Exit(1)
    if not out.exists():
        out.mkdir(parents=True, mode=0o700)
        out.chmod(0o700)  # mkdir's mode is masked by the umask
    elif out.stat().st_mode & 0o077:
        typer.echo(
            f"note: {out} is open to other users (mode {oct(out.stat().st_mode & 0o777)}); the key files "
            "themselves are 0600",
            err=True,
        )

    written: list[Path] = []

    def put(name: str, text: str) -> None:
        written.append(curve.write_secret_file(out / name, (text + "\n").encode(), force=True))

    put(FLEET_SECRET, secrets.token_hex(32))
    put(DASHBOARD_TOKEN, secrets.token_urlsafe(32))
    passwords = {role: secrets.token_hex(24) for role in acl.ROLES}
    for role, password in passwords.items():
        put(acl.ROLE_PASSWORD_FILE.format(role=role), password)
    put(ACL_FILE, acl.acl_file(passwords, prefix).rstrip("\n"))
    for name in (curve.SERVER, curve.CLIENT):
        written += curve.write_keypair(out, name, curve.generate_keypair(), force=True)

    typer.echo(f"wrote {len(written)} files (mode 0600) in {out}:")
    for p in written:
        typer.echo(f"  {p}")
    typer.echo(
        "use them with:\n"
        f"  --set weights.secret_file={out / FLEET_SECRET}\n"
        f"  --set redis.users_dir={out}  (and redis.user=<role> per component)\n"
        f"  --set weights.curve_dir={out}\n"
        f"  --set dashboard.token_file={out / DASHBOARD_TOKEN}\n"
        f"  external Redis: aclfile {out / ACL_FILE}\n"
        "robots need only curve-server.public, curve-client.* and redis-actor.password."
    )
