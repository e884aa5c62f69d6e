# keyturn-agent: what the rotation daemon (`keyturn run`, `keyturn rotate`) needs, and no more.
#
# Convention: rotated credentials live under `keyturn/` in the KV v2 mount `secret/`, and
# keyturn keeps each one's rotation state (holder, step, the PENDING value) under
# `keyturn-state/`. Apps read their own `secret/data/keyturn/<name>` through their own,
# narrower policies (see keyturn-init.hcl); none of them needs `keyturn-state/`.
# Adjust the mount and prefixes to your layout; keep the two prefixes separate.

# CURRENT values: read, and write new versions (check-and-set enforced by keyturn).
path "secret/data/keyturn/*" {
  capabilities = ["create", "read", "update"]
}

# Rotation state: the fence for every in-flight rotation.
path "secret/data/keyturn-state/*" {
  capabilities = ["create", "read", "update"]
}

# No delete, no destroy, no metadata writes: PREVIOUS versions must survive the agent.
