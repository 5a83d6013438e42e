{{/*
keyhole installs once per cluster: its webhook configurations, admission policy
and ClusterRole are cluster-wide, and the injector asks the API server for the
policy by its name. So object names are fixed (the same as `manifests/`), and
selectors are the component label alone, as there: a kustomize install can be
taken over by the chart without recreating its Deployments.
*/}}

{{- define "keyhole.labels" -}}
app.kubernetes.io/name: keyhole
app.kubernetes.io/part-of: keyhole
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "keyhole.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The keyhole-config body: the values' config, the injector image defaulted. */}}
{{- define "keyhole.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $injector := get $config "injector" | default dict -}}
{{- if not (get $injector "image") -}}
{{- $_ := set $injector "image" (include "keyhole.image" .) -}}
{{- end -}}
{{- $_ := set $config "injector" $injector -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The rotation controller's username, for the CEL in the webhook configurations. */}}
{{- define "keyhole.rotationUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:keyhole-rotation
{{- end -}}

{{/* The audiences of the stores, each once, in name order: one projected token each for rotation. */}}
{{- define "keyhole.audiences" -}}
{{- $seen := dict -}}
{{- range $name, $store := .Values.config.stores -}}
{{- $aud := $store.audience | default (eq $store.kind "vault" | ternary "vault" "sts.amazonaws.com") -}}
{{- $_ := set $seen $aud true -}}
{{- end -}}
{{- keys $seen | sortAlpha | join "," -}}
{{- end -}}

{{- define "keyhole.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
  - {key: kubernetes.io/metadata.name, operator: NotIn, values: {{ concat .Values.webhook.excludedNamespaces (list .Release.Namespace) | uniq | toJson }}}
  {{- range .Values.webhook.namespaceSelector }}
  - {{ toJson . }}
  {{- end }}
{{- end -}}

{{/* caBundle for clientConfig, or nothing (cert-manager's CA injector writes it). */}}
{{- define "keyhole.caBundle" -}}
{{- if eq .Values.tls.source "secret" -}}
{{- required "tls.caBundle (base64 PEM of the CA) is required with tls.source=secret" .Values.tls.caBundle -}}
{{- else if eq .Values.tls.source "helm" -}}
{{- (include "keyhole.generatedTLS" . | fromYaml).ca -}}
{{- end -}}
{{- end -}}

{{/*
The serving certificate made at install (tls.source=helm), as base64 PEM:
{ca, caKey, crt, key, notAfter}. The CA lives in its own Secret (<secretName>-ca,
mounted by no pod) and is kept across upgrades, so the caBundle never changes;
the serving certificate is kept while more than renewDays are left, then signed
again by the same CA. Memoised in .Values so every template sees the same pair.
*/}}
{{- define "keyhole.generatedTLS" -}}
{{- if not (hasKey .Values "_generatedTLS") -}}
{{- $ns := .Release.Namespace -}}
{{- $caSecret := lookup "v1" "Secret" $ns (printf "%s-ca" .Values.tls.secretName) -}}
{{- $secret := lookup "v1" "Secret" $ns .Values.tls.secretName -}}
{{- $ca := dict -}}
{{- if and $caSecret (hasKey ($caSecret.data | default dict) "tls.crt") (hasKey $caSecret.data "tls.key") -}}
{{- $ca = buildCustomCert (index $caSecret.data "tls.crt") (index $caSecret.data "tls.key") -}}
{{- else -}}
{{- $ca = genCAWithKey "keyhole-webhook-ca" 3650 (genPrivateKey "ecdsa") -}}
{{- end -}}
{{- $caCrt := $ca.Cert | b64enc -}}
{{- $notAfter := 0 -}}
{{- if $secret -}}
{{- $notAfter = (index ($secret.metadata.annotations | default dict) "keyhole.dev/not-after" | default "0") | int64 -}}
{{- end -}}
{{- $renewAt := add (now | unixEpoch) (mul .Values.tls.helm.renewDays 86400) -}}
{{- if and $secret (gt $notAfter $renewAt) (eq (index ($secret.data | default dict) "ca.crt" | default "") $caCrt) -}}
{{- $_ := set .Values "_generatedTLS" (dict "ca" $caCrt "caKey" ($ca.Key | b64enc) "crt" (index $secret.data "tls.crt") "key" (index $secret.data "tls.key") "notAfter" (toString $notAfter)) -}}
{{- else -}}
{{- $svc := "keyhole-webhook" -}}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $days := int .Values.tls.helm.days -}}
{{- $cert := genSignedCertWithKey (printf "%s.%s.svc" $svc $ns) nil $dns $days $ca (genPrivateKey "ecdsa") -}}
{{- $until := add (now | unixEpoch) (mul $days 86400) -}}
{{- $_ := set .Values "_generatedTLS" (dict "ca" $caCrt "caKey" ($ca.Key | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "notAfter" (toString $until)) -}}
{{- end -}}
{{- end -}}
{{- toYaml .Values._generatedTLS -}}
{{- end -}}
