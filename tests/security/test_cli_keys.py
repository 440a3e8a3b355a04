"""`fleet keys generate`: 0600 files in a 0700 directory, usable by every part, never printed."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fleet import acl, curve
from fleet.cli_keys import DASHBOARD_TOKEN, FLEET_SECRET, keys_app, planned_files
from fleet.config import FleetConfig


def _secrets(out: Path) -> list[str]:
    """Every secret value written (public keys and the hash-only ACL file excluded)."""
    return [p.read_text().strip() for p in planned_files(out) if not p.name.endswith((".public", ".acl"))]


def test_generate_writes_private_files_and_prints_no_secret(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    res = CliRunner().invoke(keys_app, ["generate", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    files = planned_files(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in files)
    values = _secrets(out)
    assert len(values) == 8 and len(set(values)) == 8 and all(len(v) >= 32 for v in values)
    assert not any(v in res.output for v in values)
    assert all(str(p) in res.output for p in files)
    acl_text = (out / "redis-users.acl").read_text()
    assert not any(v in acl_text for v in values) and acl.password_hash(values[2]) in acl_text

    # every part reads its piece
    cfg = FleetConfig.load(
        overrides=[
            f"weights.secret_file={out / FLEET_SECRET}",
            f"redis.users_dir={out}",
            f"weights.curve_dir={out}",
            f"dashboard.token_file={out / DASHBOARD_TOKEN}",
            "weights.secret_env=MOLMOFLEET_TEST_UNSET",
            "dashboard.token_env=MOLMOFLEET_TEST_UNSET",
        ]
    )
    assert cfg.weights.secret() == (out / FLEET_SECRET).read_text().strip()
    assert cfg.dashboard.token() == (out / DASHBOARD_TOKEN).read_text().strip()
    assert set(acl.role_passwords(cfg.redis)) == set(acl.ROLES)
    server, client = curve.load_server_keys(out), curve.load_client_keys(out)
    assert client.keypair.public in server.allowed_clients
    # and the configuration, as `fleet config` prints it, names files only
    dumped = cfg.dump_yaml()
    assert str(out) in dumped and not any(v in dumped for v in values)


def test_generate_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(keys_app, ["generate", "--out", str(tmp_path)]).exit_code == 0
    before = _secrets(tmp_path)
    res = runner.invoke(keys_app, ["generate", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "--force" in res.output
    assert _secrets(tmp_path) == before
    assert runner.invoke(keys_app, ["generate", "--out", str(tmp_path), "--force"]).exit_code == 0
    after = _secrets(tmp_path)
    assert all(a != b for a, b in zip(after, before, strict=True))
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in planned_files(tmp_path))
