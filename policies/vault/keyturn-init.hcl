# keyturn-init: what one pod's Vault role may do, and nothing more.
#
# Bind this policy (one per workload, with that workload's paths) to the workload's
# Kubernetes auth role:
#
#   bao write auth/kubernetes/role/orders-api \
#       bound_service_account_names=orders-api bound_service_account_namespaces=shop \
#       audience=vault token_policies=keyturn-init-orders-api token_ttl=10m
#
# Read-only on the pod's own secrets. No list, no write, no metadata, no other path: a pod
# that asks for anything else gets 403, and keyturn-init exits 77 naming the path.

# KV v2: the data of the workload's secrets (the API path includes data/).
path "secret/data/orders/*" {
  capabilities = ["read"]
}

# KV v1.
path "kv/orders/*" {
  capabilities = ["read"]
}

# A dynamic credential (its lease is tied to the login token: keyturn-init then leaves the
# token to expire with its TTL instead of revoking it).
path "database/creds/orders-ro" {
  capabilities = ["read"]
}

# keyturn-init revokes its own token at exit. (Also in Vault's default policy; listed so a
# role with token_no_default_policy still cleans up.) Finding which engine serves a path
# uses sys/internal/ui/mounts, which every token may read.
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
