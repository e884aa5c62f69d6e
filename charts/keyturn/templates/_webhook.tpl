{{/* Names and labels of the admission webhook (`keyturn webhook`), beside the daemon's. */}}

{{/* The webhook's Deployment, Service and ServiceAccount: FULLNAME-webhook (at most 60
characters, a valid Service name). */}}
{{- define "keyturn.webhook.fullname" -}}
{{- printf "%s-webhook" (include "keyturn.fullname" .) }}
{{- end }}

{{/* Cluster-scoped objects (the MutatingWebhookConfiguration, ClusterRole and
ClusterRoleBinding) carry the namespace too: two releases of the same name in two
namespaces must not overwrite each other's. */}}
{{- define "keyturn.webhook.clusterName" -}}
{{- printf "%s-webhook-%s" (include "keyturn.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "keyturn.webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyturn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "keyturn.webhook.labels" -}}
{{ include "keyturn.labels" . | replace "component: agent" "component: webhook" }}
{{- end }}

{{- define "keyturn.webhook.serviceAccountName" -}}
{{- if .Values.webhook.serviceAccount.create }}
{{- default (include "keyturn.webhook.fullname" .) .Values.webhook.serviceAccount.name }}
{{- else if .Values.webhook.serviceAccount.name }}
{{- .Values.webhook.serviceAccount.name }}
{{- else }}
{{- fail "webhook.serviceAccount.name: give the existing ServiceAccount to use when webhook.serviceAccount.create is false" }}
{{- end }}
{{- end }}

{{/* The keyturn-init image the webhook puts into annotated pods. */}}
{{- define "keyturn.webhook.initImage" -}}
{{- with .Values.webhook.initImage }}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The serving certificate's Secret in cert-manager mode. */}}
{{- define "keyturn.webhook.tlsSecret" -}}
{{- printf "%s-tls" (include "keyturn.webhook.fullname" .) }}
{{- end }}

{{/* checkov skips on the webhook's Deployment, each with its reason (the same checks and
grounds as the daemon's, in keyturn.checkovSkips). */}}
{{- define "keyturn.webhook.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_38=the webhook {{ if not .Values.webhook.certManager.enabled }}writes its CA into its MutatingWebhookConfiguration, takes a Lease and {{ end }}records Events through the Kubernetes API with this token, so it is mounted; the ServiceAccount itself does not automount
{{- if not .Values.image.digest }}
checkov.io/skip2: CKV_K8S_43=the image is built from this repository (dev/images.sh) and pushed to the user's registry, so no digest is known to the chart; set image.digest to pin one
{{- end }}
{{- if ne .Values.image.pullPolicy "Always" }}
checkov.io/skip3: CKV_K8S_15=the tag is the release's version (or a digest), never a moving tag; IfNotPresent keeps a restart from depending on the registry
{{- end }}
{{- end }}
