# keyturn-break-glass: what an on-call engineer's token needs for `keyturn break-glass`, and
# no more. Attach it to the on-call group's entity (or issue a short-lived token with it);
# the token's display name and entity are what the audit log records as the operator.
#
# Same layout convention as keyturn-agent.hcl: credentials under `secret/keyturn/`, rotation
# state (and the break-glass journal, `keyturn-state/_break-glass`) under
# `secret/keyturn-state/`.

# Read CURRENT (reveal) and write new versions (rotate, revoke), check-and-set enforced.
path "secret/data/keyturn/*" {
  capabilities = ["create", "read", "update"]
}

# The rotation fence and the taint a reveal sets; the journal the daemon watches.
path "secret/data/keyturn-state/*" {
  capabilities = ["create", "read", "update"]
}

# Who am I: the display name and entity that go into the audit record.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# `break-glass revoke --lease-prefix database/creds/...`: revoke dynamic credentials.
path "sys/leases/revoke-prefix/database/creds/*" {
  capabilities = ["update", "sudo"]
}

# No delete, no destroy, no metadata writes: PREVIOUS versions survive an emergency too.
