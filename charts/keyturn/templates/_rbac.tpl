{{/*
What `keyturn policy rbac` computes (agent/src/policy/rbac.rs), from the same policies:
per namespace a policy delivers to, the Secrets it patches and the workloads it rolls,
by resource. Returns YAML: {NAMESPACE: {secrets: {NAME: true}, daemonsets: {...},
deployments: {...}, statefulsets: {...}}}; dict keys come out sorted, as the Rust side's
BTreeSets do. Kinds keyturn cannot restart are left out there too (the daemon rejects them).
*/}}
{{- define "keyturn.rbacNeeds" -}}
{{- $kinds := dict "Deployment" "deployments" "StatefulSet" "statefulsets" "DaemonSet" "daemonsets" }}
{{- $out := dict }}
{{- range $p := .Values.policies }}
{{- range $d := ($p.spec.distribute | default list) }}
{{- with $d.kubernetes }}
{{- $ns := get $out .namespace | default dict }}
{{- $secrets := get $ns "secrets" | default dict }}
{{- $_ := set $secrets .secret true }}
{{- $_ := set $ns "secrets" $secrets }}
{{- range $w := ($d.restart | default list) }}
{{- $plural := get $kinds $w.kind }}
{{- if $plural }}
{{- $names := get $ns $plural | default dict }}
{{- $_ := set $names $w.name true }}
{{- $_ := set $ns $plural $names }}
{{- end }}
{{- end }}
{{- $_ := set $out .namespace $ns }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}
