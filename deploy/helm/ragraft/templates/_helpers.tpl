{{/*
Names.  Every object is <release>-ragraft (or fullnameOverride), at most 52
characters: a StatefulSet's pods carry the label controller-revision-hash =
<name>-<10 characters>, which may not exceed 63.  The pods, and so the node ids,
are <fullname>-<ordinal>.
*/}}
{{- define "ragraft.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service: the pods' DNS names, which the nodes dial. */}}
{{- define "ragraft.headless" -}}
{{- printf "%s-peers" (include "ragraft.fullname" .) -}}
{{- end -}}

{{/* <headless>.<namespace>.svc.<domain>: what follows a pod's name in its DNS name. */}}
{{- define "ragraft.peerDomain" -}}
{{- printf "%s.%s.svc.%s" (include "ragraft.headless" .) .Release.Namespace .Values.cluster.domain -}}
{{- end -}}

{{/* The client Service's URL: the member a joining node asks (RAGRAFT_JOIN). */}}
{{- define "ragraft.clientUrl" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "ragraft.fullname" .) .Release.Namespace .Values.cluster.domain (int .Values.ports.api) -}}
{{- end -}}

{{- define "ragraft.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "ragraft.fullname" .)) -}}
{{- end -}}

{{- define "ragraft.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ragraft.labels" -}}
{{ include "ragraft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
RAGRAFT_NODES: the first cluster.initialMembers pods, id=DNS name, comma-separated,
e.g. r-ragraft-0=r-ragraft-0.r-ragraft-peers.default.svc.cluster.local,...
`ragraft init` is run with the same value (NOTES.txt prints it).
*/}}
{{- define "ragraft.initialNodes" -}}
{{- $full := include "ragraft.fullname" . -}}
{{- $domain := include "ragraft.peerDomain" . -}}
{{- range $i := until (int .Values.cluster.initialMembers) -}}
{{- if $i }},{{ end -}}
{{ $full }}-{{ $i }}={{ $full }}-{{ $i }}.{{ $domain }}
{{- end -}}
{{- end -}}
