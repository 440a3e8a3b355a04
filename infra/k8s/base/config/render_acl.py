"""Write Redis's ACL file for the cluster (init container of the redis StatefulSet, molmofleet-cpu image).

The users and their rules come from fleet/acl.py, so the cluster's Redis grants exactly what the embedded one
does: actor (append episodes, heartbeats, read weights and rollout state), learner (read episodes, consume
events, write weight versions), dashboard (read-only), admin (operators, the rollout controller). Passwords come
from MOLMOFLEET_REDIS_<ROLE>_PASSWORD (the molmofleet-redis Secret) and reach the file only as SHA-256 digests;
the file lives on a memory-backed emptyDir. The key prefix is replay.prefix of the fleet config.
"""

import os
import sys
from pathlib import Path

from fleet.acl import ROLE_PASSWORD_ENV, ROLES, acl_file
from fleet.config import FleetConfig

MIN_CHARS = 16

out = Path(os.environ.get("ACL_FILE", "/run/redis/users.acl"))
prefix = FleetConfig.load(os.environ.get("FLEET_CONFIG", "/etc/molmofleet/fleet.yaml")).replay.prefix
passwords = {role: os.environ.get(ROLE_PASSWORD_ENV.format(role=role.upper()), "") for role in ROLES}
weak = [ROLE_PASSWORD_ENV.format(role=r.upper()) for r, pw in passwords.items() if len(pw) < MIN_CHARS]
if weak:
    sys.exit(f"render_acl: {', '.join(weak)} must be set and at least {MIN_CHARS} characters")
out.write_text(acl_file(passwords, prefix=prefix))  # the default user is turned off
out.chmod(0o600)
print(f"render_acl: wrote {out} for {', '.join(ROLES)} (prefix {prefix!r})")
