#!/usr/bin/env python3
"""Static checks of docker-compose.yml (no Docker engine runs in CI):

- it parses as YAML and has services;
- every service has an image or a build, and a healthcheck;
- every LAMBDA_* variable it sets is one the binary reads: the names come
  from common/src/config.rs (`pub mod env`), the single list in the code;
- every `lambda` role service sets the variables that role needs (speed and
  serving layers: a batch URL or a store URL to read the views from), and
  a `file://` store URL is on a volume the service mounts.
"""
import re
import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parent.parent
compose = yaml.safe_load((root / "docker-compose.yml").read_text())
known = set(re.findall(r'pub const \w+: &str = "(LAMBDA_\w+)";', (root / "common/src/config.rs").read_text()))
needs = {
    "batch": {"LAMBDA_BROKERS", "LAMBDA_TOPIC", "LAMBDA_DATA_DIR", "LAMBDA_HTTP_ADDR"},
    "speed": {"LAMBDA_BROKERS", "LAMBDA_TOPIC", "LAMBDA_DATA_DIR", "LAMBDA_HTTP_ADDR"},
    "serve": {"LAMBDA_BROKERS", "LAMBDA_TOPIC", "LAMBDA_DATA_DIR", "LAMBDA_HTTP_ADDR"},
}
# Where the speed and serving layers read the batch views: at least one.
view_sources = {"LAMBDA_BATCH_URL", "LAMBDA_STORE_URL"}
errors = []
services = compose.get("services") or {}
if not services:
    errors.append("no services")
if not known:
    errors.append("found no LAMBDA_* names in common/src/config.rs")
for name, svc in services.items():
    if "image" not in svc and "build" not in svc:
        errors.append(f"{name}: neither image nor build")
    if "healthcheck" not in svc:
        errors.append(f"{name}: no healthcheck")
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for var in env:
        if var.startswith("LAMBDA_") and var not in known:
            errors.append(f"{name}: {var} is not read by the lambda binary")
    role = (svc.get("command") or [None])[0]
    missing = needs.get(role, set()) - set(env)
    if missing:
        errors.append(f"{name} ({role}): missing {sorted(missing)}")
    if role in ("speed", "serve") and not view_sources & set(env):
        errors.append(f"{name} ({role}): sets neither of {sorted(view_sources)}")
    store = str(env.get("LAMBDA_STORE_URL", ""))
    if store.startswith("file://"):
        # A store on a directory must be a volume the service mounts.
        path = store[len("file://"):].rstrip("/")
        mounts = [str(v).split(":")[1].rstrip("/") for v in svc.get("volumes") or [] if ":" in str(v)]
        if path not in mounts:
            errors.append(f"{name}: LAMBDA_STORE_URL {store} is not on a mounted volume")
for role in needs:
    if not any((s.get("command") or [None])[0] == role for s in services.values()):
        errors.append(f"no service runs `lambda {role}`")
if errors:
    print("docker-compose.yml: " + "; ".join(errors))
    sys.exit(1)
print(f"docker-compose.yml: {len(services)} services OK, {len(known)} known LAMBDA_* variables")
