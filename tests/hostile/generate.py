#!/usr/bin/env python3
"""Writes the hostile input corpus under tests/hostile/ and its expectations, expect.tsv.

Run from anywhere: `python3 tests/hostile/generate.py`. It rewrites every corpus file and
expect.tsv from the case lists below, so a case is added or changed here, never by hand in a
generated file. Python because most cases are byte-level mutations (NUL, invalid UTF-8,
BOMs, CRLF, 1 MB values) that are awkward to keep in an editor; the files themselves are
committed, so the test suite never runs this script.

Each case is (relative path, content bytes, expected exit code, message fragment[, note]).
A note starting with `known-failure:` marks a case keyturn gets wrong today; the runner
(tests/tests/hostile.rs) still runs it but prints the reason instead of failing.
See README.md next to this file for the format and the command each folder is fed to.
"""

import hashlib
import hmac
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
# Planted wherever a value would be; the runner asserts no output contains "KTCANARY".
CAN = "KTCANARY-hostile-0f3e9a"
ESC = "\x1b[31m\x1b]0;pwned\x07\x1b[2J"  # colour, window title, clear screen
# The same, as YAML double-quoted escapes: what reaches the validators (a raw ESC is a YAML
# syntax error, which the raw-escape cases check).
YESC = "\\e[31m\\e]0;pwned\\a\\e[2J"
MB = 1024 * 1024

CASES = []


def case(path, content, code, fragment, note=""):
    if isinstance(content, str):
        content = content.encode("utf-8")
    CASES.append((path, content, code, fragment, note))


# ---------------------------------------------------------------- policies: keyturn policy check

POLICY = """apiVersion: keyturn.dev/v1
kind: RotationPolicy
metadata: {{ name: {name} }}
spec:
  {sched}
  store: {{ vault-kv: {{ path: {path} }} }}
  target: {{ generated: {{}} }}
{extra}"""


def policy(name="orders-db", sched="every: 24h", path="keyturn/orders", extra=""):
    return POLICY.format(name=name, sched=sched, path=path, extra=extra)


PG = """apiVersion: keyturn.dev/v1
kind: RotationPolicy
metadata: { name: orders-pg }
spec:
  schedule: "0 3 * * *"
  store: { vault-kv: { path: keyturn/orders-pg } }
  target:
    postgres:
      host: %s
      port: %s
      database: %s
      admin: { vault-kv: { path: %s } }
      users: %s
      strategy: %s
%s"""


def pg(host="db", port="5432", db="orders", admin="keyturn/pg-admin", users="[orders_a]",
       strategy="single", extra=""):
    return PG % (host, port, db, admin, users, strategy, extra)


DIST = """  distribute:
    - kubernetes: { namespace: %s, secret: %s, keys: { %s: %s }%s }
      restart: [ { kind: %s, name: %s } ]
"""


def dist(ns="shop", secret="orders-db", key="token", field="value", typ="", kind="Deployment",
         name="orders-api"):
    return DIST % (ns, secret, key, field, typ, kind, name)


P = "policies/"
case(P + "empty.yaml", b"", 64, "no rotation policies found")
case(P + "only-whitespace.yaml", " \n\t\n   \n", 64, "no rotation policies found")
case(P + "only-comments.yaml", "# nothing here\n# " + CAN + "\n", 64, "no rotation policies found")
case(P + "only-document-markers.yaml", "---\n---\n...\n---\n", 64, "no rotation policies found")
case(P + "bom-valid.yaml", b"\xef\xbb\xbf" + policy().encode(), 0, "ok: 1 policy")
case(P + "crlf-valid.yaml", policy().replace("\n", "\r\n"), 0, "ok: 1 policy")
case(P + "cr-only.yaml", policy().replace("\n", "\r"), 0, "ok: 1 policy")
case(P + "nul-byte.yaml", policy().replace("every: 24h", "every: 24h\x00" + CAN), 64, "nul-byte.yaml")
case(P + "nul-in-name.yaml", policy(name='"orders\\0db"'), 64, "metadata.name")
case(P + "invalid-utf8.yaml", policy().encode().replace(b"keyturn/orders", b"keyturn/\xff\xfe" + CAN.encode()), 64, "invalid-utf8.yaml")
case(P + "utf16.yaml", b"\xff\xfe" + policy().encode("utf-16-le"), 64, "utf16.yaml")
case(P + "truncated.yaml", policy()[:70], 64, "truncated.yaml")
case(P + "truncated-flow.yaml", policy().replace("{ path: keyturn/orders } }", "{ path: keyturn/orders"), 64, "truncated-flow.yaml")
case(P + "json-valid.json.yaml", json.dumps({"apiVersion": "keyturn.dev/v1", "kind": "RotationPolicy", "metadata": {"name": "orders-db"}, "spec": {"every": "24h", "store": {"vault-kv": {"path": "keyturn/orders"}}, "target": {"generated": {}}}}), 0, "ok: 1 policy")
case(P + "json-malformed.yaml", '{"apiVersion": "keyturn.dev/v1", "kind": "RotationPolicy", "metadata": {"name": "x"},,}', 64, "json-malformed.yaml")
case(P + "not-a-mapping.yaml", "- just\n- a\n- list\n", 64, "not-a-mapping.yaml")
case(P + "scalar.yaml", CAN + "\n", 64, "scalar.yaml")
case(P + "tab-indent.yaml", policy().replace("  every", "\tevery"), 64, "tab-indent.yaml")
bomb = "a: &a [" + ",".join(["x"] * 10) + "]\n"
for i in range(1, 10):
    bomb += "%s: &%s [%s]\n" % (chr(97 + i), chr(97 + i), ",".join(["*" + chr(96 + i)] * 10))
case(P + "yaml-bomb.yaml", bomb, 64, "yaml-bomb.yaml")
case(P + "yaml-bomb-in-labels.yaml", policy().replace("metadata: { name: orders-db }", "metadata:\n  name: orders-db\n  labels: &l { a: b }\n  annotations: *l") + "x0: &x0 [" + ",".join(["lol"] * 9) + "]\n" + "".join("x%d: &x%d [%s]\n" % (i, i, ",".join(["*x%d" % (i - 1)] * 9)) for i in range(1, 9)), 64, "yaml-bomb-in-labels.yaml")
case(P + "deep-nesting-flow.yaml", "a: " + "[" * 100000 + "]" * 100000 + "\n", 64, "deep-nesting-flow.yaml")
case(P + "deep-nesting-block.yaml", "".join(" " * i + "k:\n" for i in range(800)), 64, "deep-nesting-block.yaml")
case(P + "deep-nesting-in-labels.yaml", policy().replace("{ name: orders-db }", "{ name: orders-db, labels: " + "{a: " * 20000 + "b" + "}" * 20000 + " }"), 64, "deep-nesting-in-labels.yaml")
case(P + "huge-name.yaml", policy(name="a" * MB), 64, "metadata.name")
case(P + "huge-schedule.yaml", policy(sched='schedule: "' + "1," * (MB // 2) + '1 * * * *"'), 64, "longer than 1000 characters")
case(P + "huge-every.yaml", policy(sched="every: " + "9" * MB + "h"), 64, "spec.every")
case(P + "huge-label-value.yaml", policy(name="orders-db, labels: { note: " + CAN + "x" * MB + " }"), 0, "ok: 1 policy")
case(P + "huge-unknown-field-value.yaml", policy(extra="  password: " + CAN + "x" * MB + "\n"), 64, "unknown field")
case(P + "many-documents.yaml", "---\n" * 200001, 64, "many-documents.yaml")
case(P + "many-policies-dup-store.yaml", "".join(policy(name="p%d" % i) + "---\n" for i in range(3)), 64, "already used by policy")
case(P + "duplicate-key-every.yaml", policy(sched="every: 24h\n  every: 1m"), 64, "duplicate")
case(P + "duplicate-key-spec.yaml", policy(extra="spec: {}\n"), 64, "duplicate")
case(P + "duplicate-policy-name.yaml", policy() + "---\n" + policy(path="keyturn/other"), 64, "duplicate policy name")
case(P + "unknown-top-field.yaml", policy() + "status: {}\n", 64, "unknown field")
case(P + "unknown-spec-field-with-value.yaml", policy(extra="  windw: 1h\n  vault-token: " + CAN + "\n"), 64, "unknown field")
case(P + "unknown-store.yaml", policy().replace("vault-kv: { path: keyturn/orders }", "gcp-sm: { id: " + CAN + " }"), 64, "unknown variant `gcp-sm`")
case(P + "unknown-target.yaml", policy().replace("generated: {}", "oracle: { password: " + CAN + " }"), 64, "unknown variant `oracle`")
case(P + "target-unknown-field.yaml", policy().replace("generated: {}", "mysql: { password: " + CAN + " }"), 64, "unknown field `password`")
case(P + "generated-with-fields.yaml", policy().replace("generated: {}", "generated: { value: " + CAN + " }"), 64, "unknown field")
case(P + "wrong-type-spec-list.yaml", "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: x }\nspec: [a, b]\n", 64, "wrong-type-spec-list.yaml")
case(P + "wrong-type-metadata-string.yaml", policy().replace("metadata: { name: orders-db }", "metadata: " + CAN), 64, "wrong-type-metadata-string.yaml")
case(P + "wrong-type-every-map.yaml", policy(sched="every: { value: " + CAN + " }"), 64, "wrong-type-every-map.yaml")
case(P + "wrong-type-max-attempts-string.yaml", policy(extra="  max-attempts: " + CAN + "\n"), 64, "max-attempts")
case(P + "wrong-type-users-string.yaml", pg(users=CAN), 64, "wrong-type-users-string.yaml")
case(P + "wrong-type-keys-list.yaml", policy(extra="  distribute:\n    - kubernetes: { namespace: shop, secret: s, keys: [" + CAN + "] }\n"), 64, "wrong-type-keys-list.yaml")
case(P + "wrong-type-binary-tag.yaml", policy(name="!!binary G1sySg=="), 64, "wrong-type-binary-tag.yaml")
# A tag names no type to build here: the value is read as the plain mapping it is.
case(P + "custom-tag.yaml", policy(extra="  generator: !ruby/object:Gem::Installer { length: 32 }\n"), 0, "ok: 1 policy")
case(P + "merge-key.yaml", policy(extra="  generator: { <<: { length: 32 }, charset: hex }\n"), 0, "ok: 1 policy")
case(P + "null-store.yaml", policy().replace("store: { vault-kv: { path: keyturn/orders } }", "store: ~"), 64, "null-store.yaml")
case(P + "missing-spec.yaml", "apiVersion: keyturn.dev/v1\nkind: RotationPolicy\nmetadata: { name: x }\n", 64, "spec")
case(P + "missing-schedule.yaml", policy(sched=""), 64, "spec.schedule")
case(P + "both-schedule-and-every.yaml", policy(sched='every: 24h\n  schedule: "0 3 * * *"'), 64, "not both")
case(P + "wrong-api-version.yaml", policy().replace("keyturn.dev/v1", "keyturn.dev/v2"), 64, "apiVersion")
case(P + "wrong-kind.yaml", policy().replace("RotationPolicy", "Secret"), 64, "kind")
# Durations that overflow, or are out of range.
case(P + "every-100000000000y.yaml", policy(sched="every: 100000000000y"), 64, "spec.every")
case(P + "every-u64-overflow-seconds.yaml", policy(sched="every: 18446744073709551616s"), 64, "spec.every")
case(P + "every-u64-max-ns.yaml", policy(sched="every: 18446744073709551615ns"), 64, "spec.every")
case(P + "every-sum-overflow.yaml", policy(sched="every: 500000000000y 500000000000y"), 64, "spec.every")
case(P + "every-zero.yaml", policy(sched="every: 0s"), 64, "at least 1m")
case(P + "every-negative.yaml", policy(sched="every: -1h"), 64, "spec.every")
case(P + "every-1ns.yaml", policy(sched="every: 1ns"), 64, "at least 1m")
case(P + "every-empty.yaml", policy(sched='every: ""'), 64, "spec.every")
case(P + "every-float.yaml", policy(sched="every: 1.5e308h"), 64, "spec.every")
case(P + "every-nan.yaml", policy(sched="every: .nan"), 64, "spec.every")
case(P + "window-100000000000y.yaml", policy(extra="  window: 100000000000y\n"), 64, "spec.window")
case(P + "window-huge-on-cron.yaml", policy(sched='schedule: "0 3 * * *"', extra="  window: 99999999999d\n"), 64, "spec.window")
case(P + "window-longer-than-every.yaml", policy(sched="every: 1h", extra="  window: 2h\n"), 64, "spec.window")
case(P + "window-equal-cron-gap.yaml", policy(sched='schedule: "0 * * * *"', extra="  window: 1h\n"), 64, "spec.window")
case(P + "window-negative.yaml", policy(extra="  window: -5m\n"), 64, "spec.window")
case(P + "window-garbage-escape.yaml", policy(extra="  window: \"1h" + YESC + "\"\n"), 64, "spec.window")
# Cron expressions.
case(P + "cron-six-fields.yaml", policy(sched='schedule: "0 0 3 * * *"'), 64, "spec.schedule")
case(P + "cron-never-fires.yaml", policy(sched='schedule: "0 0 30 2 *"'), 64, "never fires")
case(P + "cron-dom-and-dow.yaml", policy(sched='schedule: "0 3 1 * 1"'), 64, "day-of-week")
case(P + "cron-dow-8.yaml", policy(sched='schedule: "0 3 * * 8"'), 64, "out of range")
case(P + "cron-step-zero.yaml", policy(sched='schedule: "*/0 * * * *"'), 64, "spec.schedule")
case(P + "cron-number-overflow.yaml", policy(sched='schedule: "99999999999999999999 * * * *"'), 64, "spec.schedule")
case(P + "cron-unknown-macro.yaml", policy(sched='schedule: "@reboot"'), 64, "unknown macro")
case(P + "cron-escape.yaml", policy(sched='schedule: "0 3 * * *' + YESC + '"'), 64, "spec.schedule")
case(P + "cron-every-minute-of-2099.yaml", policy(sched='schedule: "* * * * *"', extra="  window: 59s\n"), 0, "ok: 1 policy")
case(P + "cron-year-far-future.yaml", policy(sched='schedule: "0 0 29 2 *"', extra="  window: 31d\n"), 0, "ok: 1 policy")
case(P + "timezone-unknown.yaml", policy(sched='schedule: "0 3 * * *"\n  timezone: Mars/Olympus'), 64, "spec.timezone")
case(P + "timezone-traversal.yaml", policy(sched='schedule: "0 3 * * *"\n  timezone: ../../../etc/passwd'), 64, "spec.timezone")
case(P + "timezone-escape.yaml", policy(sched='schedule: "0 3 * * *"\n  timezone: "UTC' + YESC + '"'), 64, "spec.timezone")
case(P + "timezone-with-every.yaml", policy(sched="every: 24h\n  timezone: UTC"), 64, "only applies")
# Numbers out of range.
case(P + "max-attempts-u64-overflow.yaml", policy(extra="  max-attempts: 18446744073709551616\n"), 64, "max-attempts")
case(P + "max-attempts-negative.yaml", policy(extra="  max-attempts: -1\n"), 64, "max-attempts")
case(P + "max-attempts-zero.yaml", policy(extra="  max-attempts: 0\n"), 64, "between 1 and 100")
case(P + "max-attempts-octal.yaml", policy(extra="  max-attempts: 0o777\n"), 64, "max-attempts")
case(P + "generator-length-huge.yaml", policy(extra="  generator: { length: 4294967295 }\n"), 64, "between 12 and 1024")
case(P + "generator-length-overflow.yaml", policy(extra="  generator: { length: 99999999999999999999999 }\n"), 64, "length")
case(P + "generator-length-negative.yaml", policy(extra="  generator: { length: -32 }\n"), 64, "length")
case(P + "generator-charset-escape.yaml", policy(extra='  generator: { charset: "hex' + YESC + '" }\n'), 64, "spec.generator.charset")
case(P + "generator-exclude-all.yaml", policy(extra="  generator: { charset: hex, exclude: 0123456789abcdef }\n"), 64, "spec.generator.exclude")
case(P + "pg-port-overflow.yaml", pg(port="70000"), 64, "port")
case(P + "pg-port-negative.yaml", pg(port="-1"), 64, "port")
case(P + "pg-host-empty.yaml", pg(host='""'), 64, "spec.target.postgres.host")
case(P + "pg-user-nul.yaml", pg(users='["orders\\0a"]'), 64, "spec.target.postgres.users")
case(P + "pg-user-too-long.yaml", pg(users="[" + "u" * 64 + "]"), 64, "spec.target.postgres.users")
case(P + "pg-alternating-same-user.yaml", pg(users="[a, a]", strategy="alternating"), 64, "must differ")
case(P + "pg-strategy-escape.yaml", pg(strategy='"single' + YESC + '"'), 64, "spec.target.postgres.strategy")
case(P + "pg-admin-traversal.yaml", pg(admin="../../sys/raw"), 64, "spec.target.postgres.admin")
case(P + "pg-password-inline.yaml", pg(extra="      password: " + CAN + "\n"), 64, "unknown field")
# Paths, names and control characters in every string field.
case(P + "store-path-traversal.yaml", policy(path="keyturn/../../sys/raw"), 64, "spec.store.vault-kv.path")
case(P + "store-path-absolute.yaml", policy(path="/sys/raw"), 64, "spec.store.vault-kv.path")
case(P + "store-path-dot.yaml", policy(path="keyturn/./x"), 64, "spec.store.vault-kv.path")
case(P + "store-path-escape.yaml", policy(path='"keyturn/' + YESC + '"'), 64, "spec.store.vault-kv.path")
case(P + "store-path-nul.yaml", policy(path='"keyturn/a\\0b"'), 64, "spec.store.vault-kv.path")
case(P + "store-mount-traversal.yaml", policy().replace("{ path: keyturn/orders }", "{ mount: .., path: keyturn/orders }"), 64, "spec.store.vault-kv.mount")
case(P + "aws-secret-id-escape.yaml", policy().replace("vault-kv: { path: keyturn/orders }", 'aws-secretsmanager: { secret-id: "x' + YESC + '" }'), 64, "secret-id")
case(P + "aws-secret-id-huge.yaml", policy().replace("vault-kv: { path: keyturn/orders }", "aws-secretsmanager: { secret-id: " + "a" * MB + " }"), 64, "secret-id")
case(P + "aws-region-escape.yaml", policy().replace("vault-kv: { path: keyturn/orders }", 'aws-secretsmanager: { secret-id: orders, region: "eu' + YESC + '" }'), 64, "region")
case(P + "name-escape.yaml", policy(name='"orders' + YESC + '"'), 64, "metadata.name")
case(P + "name-traversal.yaml", policy(name="../../etc/passwd"), 64, "metadata.name")
case(P + "name-uppercase-unicode.yaml", policy(name="ÖRDERS-ＤＢ"), 64, "metadata.name")
case(P + "name-bidi-override.yaml", policy(name='"orders\u202edb"'), 64, "metadata.name")
case(P + "dist-namespace-escape.yaml", policy(extra=dist(ns='"shop' + YESC + '"')), 64, "namespace")
case(P + "dist-secret-traversal.yaml", policy(extra=dist(secret="../kube-system/admin")), 64, "secret")
case(P + "dist-key-traversal.yaml", policy(extra=dist(key='".."')), 64, "keys")
case(P + "dist-key-escape.yaml", policy(extra=dist(key='"tok' + YESC + '"')), 64, "keys")
case(P + "dist-field-unknown.yaml", policy(extra=dist(field=CAN)), 64, "not a field this target provides")
case(P + "dist-restart-kind-escape.yaml", policy(extra=dist(kind='"Deployment' + YESC + '"')), 64, "kind")
case(P + "dist-restart-name-huge.yaml", policy(extra=dist(name="a" * MB)), 64, "restart[0].name")
case(P + "dist-empty-keys.yaml", policy(extra="  distribute:\n    - kubernetes: { namespace: shop, secret: s, keys: {} }\n"), 64, "keys")
case(P + "dist-type-escape.yaml", policy(extra=dist(typ=', type: "Opaque' + YESC + '"')), 0, "ok: 1 policy")
case(P + "label-escape.yaml", policy(name='orders-db, labels: { team: "' + YESC + CAN + '" }'), 0, "ok: 1 policy")
case(P + "raw-escape-in-value.yaml", policy(name='"orders' + ESC + '"'), 64, "unexpected character")
# YAML allows no control character even in a comment.
case(P + "raw-escape-in-comment.yaml", "# " + ESC + "\n" + policy(), 64, "unexpected character")
case(P + "symlink-looking-name.yaml", policy(path="keyturn/orders -> /etc/shadow"), 64, "spec.store.vault-kv.path")

# ------------------------------------------------------- manifests: keyturn-init --manifest FILE

MAN = """vault: {{ auth: kubernetes, role: orders }}
secrets:
  - path: {path}
    file: {file}
{extra}"""


def man(path="secret/data/orders/db", file="db.env", extra="    format: env\n", vault=None):
    m = MAN.format(path=path, file=file, extra=extra)
    if vault is not None:
        m = m.replace("vault: { auth: kubernetes, role: orders }", vault)
    return m


M = "manifests/"
case(M + "empty.yaml", b"", 64, "empty.yaml")
case(M + "only-comment.yaml", "# " + CAN + "\n", 64, "only-comment.yaml")
case(M + "bom-valid-needs-vault.yaml", b"\xef\xbb\xbf" + man().encode(), 69, "cannot reach")
case(M + "crlf-valid-needs-vault.yaml", man().replace("\n", "\r\n"), 69, "cannot reach")
case(M + "nul-byte.yaml", man() + "\x00" + CAN, 64, "nul-byte.yaml")
case(M + "invalid-utf8.yaml", man().encode() + b"\xc3\x28" + CAN.encode(), 64, "invalid-utf8.yaml")
case(M + "utf16.yaml", b"\xff\xfe" + man().encode("utf-16-le"), 64, "utf16.yaml")
case(M + "truncated.yaml", man()[:50], 64, "truncated.yaml")
case(M + "json-malformed.json", '{"vault": {"auth": "token"}, "secrets": [{"path": "a/b", "file": "x"' , 64, "json-malformed.json")
case(M + "json-valid-needs-vault.json", json.dumps({"vault": {"auth": "kubernetes", "role": "orders"}, "secrets": [{"path": "secret/data/x", "file": "x"}]}), 69, "cannot reach")
case(M + "not-a-mapping.yaml", "[1, 2, 3]\n", 64, "not-a-mapping.yaml")
case(M + "scalar-canary.yaml", CAN + "\n", 64, "scalar-canary.yaml")
case(M + "yaml-bomb.yaml", bomb.replace("a:", "x-a:", 1) + man(), 64, "yaml-bomb.yaml")
case(M + "yaml-bomb-in-secrets.yaml", "vault: { auth: kubernetes, role: orders }\nx0: &x0 [" + ",".join(["lol"] * 9) + "]\n" + "".join("x%d: &x%d [%s]\n" % (i, i, ",".join(["*x%d" % (i - 1)] * 9)) for i in range(1, 9)) + "secrets: *x8\n", 64, "yaml-bomb-in-secrets.yaml")
case(M + "deep-nesting-flow.yaml", "secrets: " + "[" * 100000 + "]" * 100000 + "\n", 64, "deep-nesting-flow.yaml")
case(M + "deep-nesting-block.yaml", "".join(" " * i + "k:\n" for i in range(800)), 64, "deep-nesting-block.yaml")
case(M + "huge-file-name.yaml", man(file="a" * MB), 64, "huge-file-name.yaml")
case(M + "huge-path.yaml", man(path="secret/data/" + "a" * MB), 69, "cannot reach")
case(M + "huge-template.yaml", man(extra="    template: \"" + CAN + "x" * MB + "{{ .x }\"\n"), 64, "huge-template.yaml")
case(M + "huge-role-id.yaml", man(vault="vault: { auth: approle, role-id: " + CAN + "x" * MB + ", role: r, secret-id-file: /s }"), 64, "role")
case(M + "many-secrets-same-file.yaml", "vault: { auth: kubernetes, role: orders }\nsecrets:\n" + "".join("  - { path: secret/data/s%d, file: same }\n" % i for i in range(20000)), 64, "more problems not shown")
case(M + "duplicate-key-file.yaml", man(extra="    file: other.env\n"), 64, "duplicate")
case(M + "duplicate-key-vault.yaml", man() + "vault: { auth: token }\n", 64, "duplicate")
case(M + "duplicate-file.yaml", man() + "  - path: secret/data/orders/other\n    file: db.env\n", 64, "db.env")
case(M + "file-is-dir-of-other.yaml", man(file="conf") + "  - path: secret/data/orders/other\n    file: conf/db.env\n", 64, "conf")
case(M + "unknown-top-field.yaml", man() + "token: " + CAN + "\n", 64, "unknown field")
case(M + "unknown-secret-field.yaml", man(extra="    value: " + CAN + "\n"), 64, "unknown field")
case(M + "unknown-vault-field.yaml", man(vault="vault: { auth: kubernetes, role: orders, token: " + CAN + " }"), 64, "unknown field")
case(M + "wrong-type-secrets-string.yaml", "vault: { auth: kubernetes, role: orders }\nsecrets: " + CAN + "\n", 64, "wrong-type-secrets-string.yaml")
case(M + "wrong-type-secrets-map.yaml", "vault: { auth: kubernetes, role: orders }\nsecrets: { a: " + CAN + " }\n", 64, "wrong-type-secrets-map.yaml")
case(M + "wrong-type-version-string.yaml", man(extra="    version: " + CAN + "\n"), 64, "wrong-type-version-string.yaml")
case(M + "wrong-type-shared-string.yaml", man(extra="    shared: " + CAN + "\n"), 64, "wrong-type-shared-string.yaml")
case(M + "wrong-type-mode-int.yaml", man(extra="    mode: 0777\n"), 64, "mode")
case(M + "wrong-type-path-list.yaml", man(path="[" + CAN + "]"), 64, "wrong-type-path-list.yaml")
case(M + "null-secrets.yaml", "vault: { auth: kubernetes, role: orders }\nsecrets: ~\n", 64, "null-secrets.yaml")
case(M + "empty-secrets.yaml", "vault: { auth: kubernetes, role: orders }\nsecrets: []\n", 64, "secrets: is empty")
case(M + "no-vault-block.yaml", "secrets:\n  - { path: secret/data/x, file: x }\n", 64, "no vault: block")
case(M + "binary-tag.yaml", man(file="!!binary S1RDQU5BUlk="), 69, "cannot reach")
case(M + "merge-key.yaml", "vault: { <<: { auth: kubernetes }, role: orders }\nsecrets:\n  - { path: secret/data/x, file: x }\n", 69, "cannot reach")
# Path traversal and odd file names.
case(M + "file-dotdot.yaml", man(file="../escape.env"), 64, "file-dotdot.yaml")
case(M + "file-dotdot-inner.yaml", man(file="a/../../escape.env"), 64, "file-dotdot-inner.yaml")
case(M + "file-absolute.yaml", man(file="/etc/cron.d/x"), 64, "file-absolute.yaml")
case(M + "file-dot.yaml", man(file="."), 64, "file-dot.yaml")
case(M + "file-empty.yaml", man(file='""'), 64, "file-empty.yaml")
case(M + "file-double-slash.yaml", man(file="a//b"), 69, "cannot reach")
case(M + "file-trailing-slash.yaml", man(file="dir/"), 69, "cannot reach")
case(M + "file-nul.yaml", man(file='"a\\0b"'), 64, "file-nul.yaml")
case(M + "file-escape.yaml", man(file='"db' + YESC + '.env"'), 64, "contains a control character")
case(M + "file-newline.yaml", man(file='"db\\n.env"'), 64, "contains a control character")
case(M + "file-backslash-dotdot.yaml", man(file='"..\\\\..\\\\x"'), 69, "cannot reach")
case(M + "file-symlink-looking.yaml", man(file='"db.env -> /etc/shadow"'), 69, "cannot reach")
case(M + "file-proc-self.yaml", man(file="/proc/self/fd/1"), 64, "file-proc-self.yaml")
case(M + "path-dotdot.yaml", man(path="secret/data/app/../one"), 64, ". or .. segment")
case(M + "path-absolute-sys.yaml", man(path="/sys/raw/../../auth/token/create"), 64, ". or .. segment")
case(M + "path-whitespace.yaml", man(path='"secret/data/a b"'), 64, "whitespace")
case(M + "path-escape.yaml", man(path='"secret/data/' + YESC + '"'), 64, "a control character, '?' or '#'")
case(M + "path-empty.yaml", man(path='""'), 64, "path: is empty")
case(M + "path-query.yaml", man(path='"secret/data/x?version=1&list=true"'), 64, "a control character, '?' or '#'")
# Modes and numbers.
case(M + "mode-0777.yaml", man(extra='    mode: "0777"\n'), 64, "write the file")
case(M + "mode-0644-not-shared.yaml", man(extra='    mode: "0644"\n'), 64, "shared")
case(M + "mode-0660-shared.yaml", man(extra='    mode: "0660"\n    shared: true\n'), 64, "write the file")
case(M + "mode-setuid.yaml", man(extra='    mode: "4755"\n'), 64, "setuid")
case(M + "mode-not-octal.yaml", man(extra='    mode: "0999"\n'), 64, "not an octal permission")
case(M + "mode-negative.yaml", man(extra='    mode: "-400"\n'), 64, "not an octal permission")
case(M + "mode-huge.yaml", man(extra='    mode: "' + "7" * MB + '"\n'), 64, "not an octal permission")
case(M + "mode-escape.yaml", man(extra='    mode: "04' + YESC + '"\n'), 64, "not an octal permission")
case(M + "version-u64-overflow.yaml", man(extra="    version: 18446744073709551616\n"), 64, "version")
case(M + "version-negative.yaml", man(extra="    version: -1\n"), 64, "version")
case(M + "engine-unknown.yaml", man(extra="    engine: kv3" + "\n"), 64, "engine")
case(M + "format-unknown.yaml", man(extra='    format: "xml' + YESC + '"\n'), 64, "format")
case(M + "format-raw-key-escape.yaml", man(extra='    format: raw\n    key: "pass' + YESC + '"\n'), 69, "cannot reach")
# Auth blocks.
case(M + "auth-unknown.yaml", man(vault='vault: { auth: "ldap' + YESC + '", role: orders }'), 64, "unknown auth")
case(M + "auth-kubernetes-no-role.yaml", man(vault="vault: { auth: kubernetes }"), 64, "role: is required")
case(M + "auth-token-with-role-id.yaml", man(vault="vault: { auth: token, role-id: " + CAN + " }"), 64, "role-id: does not apply")
case(M + "auth-approle-both-ids.yaml", man(vault="vault: { auth: approle, role-id: " + CAN + ", role-id-file: /r, secret-id-file: /s }"), 64, "exactly one of")
case(M + "auth-approle-no-secret-id.yaml", man(vault="vault: { auth: approle, role-id: " + CAN + " }"), 64, "secret-id-file")
case(M + "address-userinfo.yaml", man(vault="vault: { auth: kubernetes, role: orders, address: \"https://admin:" + CAN + "@vault:8200\" }"), 64, "must not carry credentials")
case(M + "address-not-url.yaml", man(vault="vault: { auth: kubernetes, role: orders, address: \"vault:8200" + YESC + "\" }"), 64, "is not an http:// or https:// URL")
case(M + "address-file-scheme.yaml", man(vault="vault: { auth: kubernetes, role: orders, address: \"file:///etc/passwd\" }"), 64, "address")
case(M + "mount-empty.yaml", man(vault="vault: { auth: kubernetes, role: orders, mount: / }"), 64, "mount: is empty")
# Templates inside manifests.
case(M + "raw-escape-in-value.yaml", man(file='"db' + ESC + '"'), 64, "unexpected character")
case(M + "template-unclosed.yaml", man(extra='    template: "{{ .password "\n'), 64, "template")
case(M + "template-unknown-func.yaml", man(extra='    template: "{{ .password | exec }}"\n'), 64, "template")
case(M + "template-secret-traversal.yaml", man(extra='    template: "{{ with secret \\"secret/data/app/../one\\" }}{{ .Data.data.x }}{{ end }}"\n'), 64, "template")
case(M + "template-deep-nesting.yaml", man(extra='    template: "' + "{{ if .a }}" * 20000 + "{{ end }}" * 20000 + '"\n'), 64, "template")
case(M + "template-deep-parens.yaml", man(extra='    template: "{{ ' + "(" * 50000 + ".a" + ")" * 50000 + ' }}"\n'), 64, "template")
case(M + "template-escape-literal.yaml", man(extra='    template: "{{ .pass' + YESC + ' }}"\n'), 64, "template")
case(M + "template-end-without-if.yaml", man(extra='    template: "' + CAN + '{{ end }}"\n'), 64, "template")
case(M + "template-range-bomb.yaml", man(extra='    template: "' + "{{ range . }}" * 64 + "x" + "{{ end }}" * 64 + '"\n'), 64, "range must be written")
case(M + "template-huge-width.yaml", man(extra='    template: "{{ printf \\"%99999999999d\\" 1 }}"\n'), 64, "template")

# ---------------------------------------------------- annotations: keyturn-init --annotations FILE

ANN = ('vault.hashicorp.com/agent-inject="true"\n'
       'vault.hashicorp.com/role="orders"\n'
       'vault.hashicorp.com/agent-inject-secret-db.env="secret/data/orders/db"\n')


def ann(extra="", base=ANN):
    return base + extra


A = "annotations/"
case(A + "empty", b"", 64, "agent-inject-secret-")
case(A + "only-blank-lines", "\n\n   \n\t\n", 64, "agent-inject-secret-")
case(A + "bom-first-line", b"\xef\xbb\xbf" + ann().encode(), 69, "cannot reach")
case(A + "bom-before-role", b"\xef\xbb\xbf" + ('vault.hashicorp.com/role="orders"\n' + 'vault.hashicorp.com/agent-inject-secret-db.env="secret/data/orders/db"\n').encode(), 64, "role is required")
case(A + "crlf-needs-vault", ann().replace("\n", "\r\n"), 69, "cannot reach")
case(A + "nul-byte-raw", ann('vault.hashicorp.com/agent-inject-secret-x="a\x00b"\n'), 64, "contains a control character")
case(A + "nul-byte-escaped-value", ann('vault.hashicorp.com/agent-inject-secret-x="secret/data/a\\x00b"\n'), 64, "contains a control character")
case(A + "invalid-utf8", ann().encode() + b'vault.hashicorp.com/agent-inject-secret-x="\xff\xfe' + CAN.encode() + b'"\n', 64, "invalid-utf8")
case(A + "truncated-quote", ann('vault.hashicorp.com/agent-inject-secret-x="secret/data/' + CAN), 64, "not a Go-quoted string")
case(A + "unquoted-value", ann("vault.hashicorp.com/agent-inject-secret-x=" + CAN + "\n"), 64, "not a Go-quoted string")
case(A + "bad-escape", ann('vault.hashicorp.com/agent-inject-secret-x="' + CAN + '\\q"\n'), 64, "not a Go-quoted string")
case(A + "bad-hex-escape", ann('vault.hashicorp.com/agent-inject-secret-x="' + CAN + '\\xZZ"\n'), 64, "not a Go-quoted string")
case(A + "surrogate-escape", ann('vault.hashicorp.com/agent-inject-secret-x="' + CAN + '\\ud800"\n'), 64, "not a Go-quoted string")
case(A + "escape-beyond-unicode", ann('vault.hashicorp.com/agent-inject-secret-x="' + CAN + '\\U00110000"\n'), 64, "not a Go-quoted string")
case(A + "inner-unescaped-quote", ann('vault.hashicorp.com/agent-inject-secret-x="a"' + CAN + '"\n'), 64, "not a Go-quoted string")
case(A + "no-equals", ann("vault.hashicorp.com/" + CAN + "\n"), 64, "not a key=")
case(A + "duplicate-key", ann('vault.hashicorp.com/agent-inject-secret-db.env="secret/data/orders/other"\n'), 64, "given twice")
case(A + "duplicate-role", ann('vault.hashicorp.com/role="' + CAN + '"\n'), 64, "given twice")
case(A + "file-traversal", ann('vault.hashicorp.com/agent-inject-file-db.env="../../etc/cron.d/x"\n'), 64, ":4:1: file")
case(A + "file-absolute", ann('vault.hashicorp.com/agent-inject-file-db.env="/etc/passwd"\n'), 64, ":4:1: file")
case(A + "file-escape", ann('vault.hashicorp.com/agent-inject-file-db.env="db\\x1b[31m.env"\n'), 64, ":4:1: file")
case(A + "file-nul", ann('vault.hashicorp.com/agent-inject-file-db.env="db\\x00.env"\n'), 64, ":4:1: file")
case(A + "name-traversal", ann('vault.hashicorp.com/agent-inject-secret-../../x="secret/data/x"\n'), 64, ":4:1: file")
case(A + "name-absolute", ann('vault.hashicorp.com/agent-inject-secret-/etc/x="secret/data/x"\n'), 64, ":4:1: file")
case(A + "name-dotdot", ann('vault.hashicorp.com/agent-inject-secret-..="secret/data/x"\n'), 64, ":4:1: file")
case(A + "name-escape-raw", ann('vault.hashicorp.com/agent-inject-secret-a' + ESC + '="secret/data/x"\n'), 64, ":4:1: file")
case(A + "path-traversal", ann('vault.hashicorp.com/agent-inject-secret-x="secret/data/app/../one"\n'), 64, ". or .. segment")
case(A + "path-escape", ann('vault.hashicorp.com/agent-inject-secret-x="secret/\\x1b]0;pwned\\x07"\n'), 64, "contains a control character")
case(A + "perms-0777", ann('vault.hashicorp.com/agent-inject-perms-db.env="0777"\n'), 64, "write the file")
case(A + "perms-0644", ann('vault.hashicorp.com/agent-inject-perms-db.env="0644"\n'), 64, "keyturn.dev/shared-db.env")
case(A + "perms-garbage", ann('vault.hashicorp.com/agent-inject-perms-db.env="rw-r--r--\\x1b[2J"\n'), 64, "not an octal permission")
case(A + "perms-huge", ann('vault.hashicorp.com/agent-inject-perms-db.env="' + "7" * MB + '"\n'), 64, "not an octal permission")
case(A + "shared-maybe", ann('keyturn.dev/shared-db.env="maybe"\nvault.hashicorp.com/agent-inject-perms-db.env="0440"\n'), 64, "shared-db.env")
case(A + "shared-without-secret", ann('keyturn.dev/shared-other="true"\n'), 64, "has no vault.hashicorp.com/agent-inject-secret-other")
case(A + "keyturn-unknown", ann('keyturn.dev/token="' + CAN + '"\n'), 64, "not a keyturn annotation")
case(A + "template-without-secret", ann('vault.hashicorp.com/agent-inject-template-other="' + CAN + '"\n'), 64, "has no vault.hashicorp.com/agent-inject-secret-other")
case(A + "template-unclosed", ann('vault.hashicorp.com/agent-inject-template-db.env="' + CAN + '{{ .Data.data.x "\n'), 64, "agent-inject-template-db.env")
case(A + "template-traversal", ann('vault.hashicorp.com/agent-inject-template-db.env="{{ with secret \\"secret/data/app/../one\\" }}{{ .Data.data.x }}{{ end }}"\n'), 64, "agent-inject-template-db.env")
case(A + "template-huge", ann('vault.hashicorp.com/agent-inject-template-db.env="' + CAN + "x" * MB + '{{"\n'), 64, "agent-inject-template-db.env")
case(A + "template-deep-nesting", ann('vault.hashicorp.com/agent-inject-template-db.env="' + "{{ if .a }}" * 20000 + "{{ end }}" * 20000 + '"\n'), 64, "agent-inject-template-db.env")
case(A + "template-escape", ann('vault.hashicorp.com/agent-inject-template-db.env="{{ .Data.data.x\\x1b[2J }}"\n'), 64, "agent-inject-template-db.env")
case(A + "default-template-garbage", ann('vault.hashicorp.com/agent-inject-default-template="xml\\x1b[2J"\n'), 64, "is not map or json")
case(A + "unsupported-token", ann('vault.hashicorp.com/agent-inject-token="' + CAN + '"\n'), 64, "not supported")
case(A + "unsupported-command", ann('vault.hashicorp.com/agent-inject-command-db.env="curl ' + CAN + '"\n'), 64, "not supported")
case(A + "service-not-url", ann('vault.hashicorp.com/service="vault:8200\\x1b[2J"\n'), 64, "is not an http:// or https:// URL")
case(A + "service-userinfo", ann('vault.hashicorp.com/service="https://root:' + CAN + '@vault:8200"\n'), 64, "must not carry credentials")
case(A + "role-empty", ann(base=ANN.replace('role="orders"', 'role=""')), 64, "role is required")
case(A + "no-secrets", 'vault.hashicorp.com/agent-inject="true"\nvault.hashicorp.com/role="orders"\n', 64, "agent-inject-secret-")
case(A + "huge-line-no-equals", "x" * MB + "\n", 64, "not a key=")
case(A + "huge-key", ann("vault.hashicorp.com/agent-inject-secret-" + "a" * MB + '="secret/data/x"\n'), 64, ":4:1: file")
case(A + "many-annotations", ann("".join('vault.hashicorp.com/agent-inject-secret-f%d="secret/data/s%d"\n' % (i, i) for i in range(20000))).replace('agent-inject-secret-f19999="secret/data/s19999"', 'agent-inject-secret-f19999="secret/data/../s"'), 64, ". or .. segment")
case(A + "other-prefix-canary", ann('example.com/password="' + CAN + '"\n'), 69, "cannot reach")
case(A + "yaml-instead", "vault.hashicorp.com/role: orders\nvault.hashicorp.com/agent-inject-secret-x: secret/data/x\n", 64, "not a key=")
case(A + "json-instead", json.dumps({"vault.hashicorp.com/role": "orders"}), 64, "not a key=")

# ------------------------------------------- audit: keyturn audit verify FILE (with the fixture key)

KEY = bytes([0x11] * 32)
CHAIN_KEY = hmac.new(b"keyturn audit chain key v1", KEY, hashlib.sha256).digest()
ZERO = "0" * 64


def body(seq, prev, **over):
    b = {"time": "2025-01-31T03:00:00.123Z", "seq": seq,
         "actor": {"kind": "service-account", "name": "orders-api", "namespace": "shop", "pod": "orders-api-7f9c"},
         "action": "secret.read", "resource": "secret/data/orders/db", "outcome": "ok",
         "prev": prev}
    b.update(over)
    # `prev` is always last, as in the writer's canonical form.
    p = b.pop("prev")
    b["prev"] = p
    return json.dumps(b, separators=(",", ":"), ensure_ascii=False).encode()


def seal(canon, key=CHAIN_KEY, mac=True):
    h = hashlib.sha256(canon).hexdigest()
    m = hmac.new(key, bytes.fromhex(h), hashlib.sha256).hexdigest()
    tail = ',"hash":"%s"' % h + (',"mac":"%s"' % m if mac else "") + "}"
    return canon[:-1] + tail.encode() + b"\n", h


def chain(n=4, start=0, prev=ZERO, mac=True, over=None):
    lines, p = [], prev
    for i in range(n):
        extra = (over or {}).get(start + i, {})
        line, p = seal(body(start + i, p, **extra), mac=mac)
        lines.append(line)
    return lines


V = chain()
AU = "audit/"
case(AU + "valid-control.jsonl", b"".join(V), 0, "ok: 4 events")
case(AU + "empty.jsonl", b"", 0, "ok: 0 events")
case(AU + "only-newlines.jsonl", b"\n\n\n", 1, "seq 0")
case(AU + "truncated-last-line.jsonl", b"".join(V[:3]) + V[3][:90], 1, "torn line")
case(AU + "no-final-newline.jsonl", b"".join(V)[:-1], 1, "torn line")
case(AU + "truncated-mid-hash.jsonl", b"".join(V[:3]) + V[3][:-40] + b"\n", 1, "seq 3")
case(AU + "seq-gap-resealed.jsonl", b"".join(V[:2]) + b"".join(chain(2, start=3, prev=hashlib.sha256(body(1, ZERO)).hexdigest())), 1, "seq")
seq_bad = V[:2] + [seal(body(7, json.loads(V[1])["hash"]))[0]]
case(AU + "seq-wrong-resealed.jsonl", b"".join(seq_bad), 1, "found seq 7 where seq 2 was expected")
prev_bad = V[:2] + [seal(body(2, "ab" * 32))[0]]
case(AU + "prev-wrong-resealed.jsonl", b"".join(prev_bad), 1, "does not link")
mac_bad = V[:2] + [seal(body(2, json.loads(V[1])["hash"]), key=b"\x22" * 32)[0]]
case(AU + "mac-wrong-key.jsonl", b"".join(mac_bad), 1, "MAC mismatch")
edited = V[1].replace(b'"outcome":"ok"', b'"outcome":"denied"')
case(AU + "edited-not-resealed.jsonl", V[0] + edited + V[2] + V[3], 1, "hash mismatch")
case(AU + "edited-resealed-without-key.jsonl", V[0] + seal(body(1, json.loads(V[0])["hash"], outcome="denied"), key=b"\x00" * 32)[0] + V[2], 1, "seq 1")
case(AU + "line-deleted.jsonl", V[0] + V[2] + V[3], 1, "found seq 2 where seq 1 was expected")
case(AU + "lines-swapped.jsonl", V[0] + V[2] + V[1] + V[3], 1, "seq 1")
case(AU + "line-repeated.jsonl", V[0] + V[1] + V[1] + V[2], 1, "seq 2")
# Without an anchor a chain may continue an earlier file: said so, exit 0 (--anchor catches it).
case(AU + "head-deleted.jsonl", b"".join(V[1:]), 0, "continues an earlier chain")
case(AU + "unkeyed.jsonl", b"".join(chain(mac=False)), 1, "unkeyed")
case(AU + "mac-stripped-after-keyed.jsonl", V[0] + V[1] + chain(2, start=2, prev=json.loads(V[1])["hash"], mac=False)[0], 1, "no MAC")
case(AU + "mac-uppercase.jsonl", V[0] + V[1][:-66] + V[1][-66:].upper().replace(b'"}', b'"}'), 1, "seq 1")
case(AU + "hash-uppercase.jsonl", V[0].replace(json.loads(V[0])["hash"].encode(), json.loads(V[0])["hash"].upper().encode()), 1, "seq 0")
case(AU + "garbage-line.jsonl", V[0] + b"this is not json " + CAN.encode() + b"\n" + V[1], 1, "seq 1")
case(AU + "garbage-line-escape.jsonl", V[0] + ESC.encode() + CAN.encode() + b"\n", 1, "seq 1")
case(AU + "json-not-entry.jsonl", b'{"seq":0,"prev":"' + ZERO.encode() + b'","hash":"' + ZERO.encode() + b'","note":"' + CAN.encode() + b'"}\n', 1, "seq 0")
case(AU + "nul-bytes.jsonl", V[0] + b"\x00" * 200 + b"\n", 1, "seq 1")
case(AU + "nul-in-line-resealed.jsonl", seal(body(0, ZERO, detail="a\x00b"))[0], 0, "ok: 1 events")
case(AU + "invalid-utf8-resealed.jsonl", seal(body(0, ZERO).replace(b'"secret.read"', b'"secret.\xff\xfe' + CAN.encode() + b'"'))[0], 0, "ok: 1 events")
case(AU + "invalid-utf8-not-resealed.jsonl", V[0].replace(b'"secret.read"', b'"secret.\xff\xfe"'), 1, "hash mismatch")
case(AU + "bom.jsonl", b"\xef\xbb\xbf" + b"".join(V), 1, "seq 0")
case(AU + "crlf.jsonl", b"".join(V).replace(b"\n", b"\r\n"), 1, "seq 0")
case(AU + "blank-line-between.jsonl", V[0] + b"\n" + V[1], 1, "seq 1")
case(AU + "seq-u64-overflow.jsonl", seal(body(0, ZERO).replace(b'"seq":0', b'"seq":18446744073709551616'))[0], 1, "seq 0")
case(AU + "seq-u64-max-then-next.jsonl", seal(body(18446744073709551615, ZERO))[0] + seal(body(0, ZERO))[0], 1, "seq")
case(AU + "seq-negative.jsonl", seal(body(-1, ZERO))[0], 1, "seq 0")
case(AU + "seq-float.jsonl", seal(body(0, ZERO).replace(b'"seq":0', b'"seq":0.0'))[0], 1, "seq 0")
case(AU + "seq-string.jsonl", seal(body(0, ZERO).replace(b'"seq":0', b'"seq":"0"'))[0], 1, "seq 0")
case(AU + "seq-leading-zero.jsonl", V[0] + seal(body(1, json.loads(V[0])["hash"]).replace(b'"seq":1', b'"seq":01'))[0], 1, "seq 1")
case(AU + "seq-duplicate-member.jsonl", seal(body(0, ZERO).replace(b'"actor"', b'"seq":5,"actor"'))[0], 1, "seq 0")
case(AU + "prev-not-hex.jsonl", seal(body(0, "zz" * 32))[0], 1, "seq 0")
case(AU + "prev-short.jsonl", seal(body(0, "00"))[0], 1, "seq 0")
case(AU + "hash-missing.jsonl", body(0, ZERO) + b"\n", 1, "seq 0")
case(AU + "line-over-1mb.jsonl", seal(body(0, ZERO, detail=CAN + "x" * (MB + 10)))[0], 1, "longer than")
case(AU + "line-just-under-1mb.jsonl", seal(body(0, ZERO, detail="y" * (MB - 600)))[0], 0, "ok: 1 events")
# The verifier reads the writer's fixed layout, not JSON: a line sealed under the key is vouched for.
case(AU + "deep-json-nesting.jsonl", seal(body(0, ZERO).replace(b'"outcome":"ok"', b'"outcome":"ok","x":' + b"[" * 100000 + b"]" * 100000))[0], 0, "ok: 1 events")
case(AU + "escape-in-detail-resealed.jsonl", seal(body(0, ZERO, detail=ESC, reason=CAN))[0], 0, "ok: 1 events")
case(AU + "raw-escape-resealed.jsonl", seal(body(0, ZERO).replace(b'"secret.read"', b'"' + ESC.encode() + b'"'))[0], 0, "ok: 1 events")
case(AU + "chain-from-another-file.jsonl", b"".join(chain(2, start=10, prev="cd" * 32)), 0, "ok: 2 events")
case(AU + "time-garbage-resealed.jsonl", seal(body(0, ZERO, time=CAN))[0], 0, "ok: 1 events")

# -------------------------------------------------- audit-tail: keyturn audit tail FILE

T = "audit-tail/"
case(T + "valid-control.jsonl", b"".join(V), 0, "secret.read")
case(T + "empty.jsonl", b"", 0, "")
case(T + "garbage-line.jsonl", V[0] + b"not json " + CAN.encode() + b"\n", 0, "not an audit entry (byte offset")
case(T + "garbage-escape.jsonl", ESC.encode() + b"\n" + V[0], 0, "not an audit entry (byte offset 0)")
case(T + "escape-in-fields.jsonl", seal(body(0, ZERO, detail=ESC, reason=ESC, resource=ESC, action=ESC, actor={"kind": "operator", "name": ESC, "entity": ESC}))[0], 0, "\\u{1b}")
case(T + "nul-bytes.jsonl", b"\x00" * 4096 + b"\n", 0, "not an audit entry")
case(T + "invalid-utf8.jsonl", V[0].replace(b'"secret.read"', b'"secret.\xff"'), 0, "not an audit entry")
case(T + "truncated-last-line.jsonl", V[0] + V[1][:60], 0, "secret.read")
case(T + "line-over-1mb.jsonl", seal(body(0, ZERO, detail="x" * (MB + 10)))[0], 74, "longer than")
case(T + "bidi-and-c1-controls.jsonl", seal(body(0, ZERO, reason="a\u202eb\u0085c\u009bd"))[0], 0, "\\u{9b}")
case(T + "crlf.jsonl", b"".join(V).replace(b"\n", b"\r\n"), 0, "secret.read")
case(T + "wrong-types.jsonl", seal(body(0, ZERO, outcome=CAN).replace(b"\"seq\":0", b"\"seq\":\"x\""))[0], 0, "not an audit entry")
case(T + "deep-json-nesting.jsonl", b'{"x":' + b"[" * 100000 + b"]" * 100000 + b"}\n", 0, "not an audit entry")

# --------------------------------------------- audit-keys: keyturn audit verify --audit-hmac-key-file FILE

K = "audit-keys/"
case(K + "valid-hex-control.key", KEY.hex() + "\n", 0, "ok: 4 events")
case(K + "empty.key", b"", 64, "empty.key is 0 bytes")
case(K + "short.key", b"\x11" * 8, 64, "short.key")
case(K + "odd-hex.key", "1" * 63 + "\n", 1, "MAC mismatch")
case(K + "huge.key", b"\x11" * (MB + 1), 64, "huge.key")
case(K + "whitespace-only.key", b" \n\t\n", 64, "whitespace-only.key")
case(K + "wrong-key.key", (b"\x22" * 32).hex(), 1, "MAC mismatch")
case(K + "nul-bytes.key", b"\x00" * 32, 1, "MAC mismatch")
case(K + "escape.key", (ESC * 8).encode(), 1, "MAC mismatch")

# ------------------------------------------------------------------------------- write it all


def main():
    for sub in ("policies", "manifests", "annotations", "audit", "audit-tail", "audit-keys"):
        shutil.rmtree(os.path.join(HERE, sub), ignore_errors=True)
    fixtures = os.path.join(HERE, "fixtures")
    os.makedirs(fixtures, exist_ok=True)
    with open(os.path.join(fixtures, "audit.key"), "w") as f:
        f.write(KEY.hex() + "\n")
    with open(os.path.join(fixtures, "valid.jsonl"), "wb") as f:
        f.write(b"".join(V))
    seen = set()
    rows = []
    for path, content, code, fragment, note in CASES:
        assert path not in seen, path
        assert "\t" not in fragment and "\n" not in fragment, path
        seen.add(path)
        full = os.path.join(HERE, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(content)
        rows.append("\t".join([path, str(code), fragment] + ([note] if note else [])))
    with open(os.path.join(HERE, "expect.tsv"), "w") as f:
        f.write("# path\texit code\tmessage fragment (in stdout or stderr)\t[known-failure: why]\n")
        f.write("# Generated by generate.py; see README.md.\n")
        f.write("\n".join(rows) + "\n")
    print("%d cases" % len(CASES))


main()
