{{/* Names and labels, node-exporter style. */}}

{{/* The chart name, overridable. */}}
{{- define "accelgen.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects (63 characters at most, a DNS label). */}}
{{- define "accelgen.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart: name-version, as the label wants it. */}}
{{- define "accelgen.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the operator pod. The component label keeps them apart from the
pools' pods, which carry app.kubernetes.io/name=accelgen too.
*/}}
{{- define "accelgen.selectorLabels" -}}
app.kubernetes.io/name: {{ include "accelgen.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "accelgen.labels" -}}
helm.sh/chart: {{ include "accelgen.chart" . }}
{{ include "accelgen.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: accelgen
{{- end }}

{{/* The operator's ServiceAccount name; fails when it cannot be known. */}}
{{- define "accelgen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "accelgen.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "accelgen: serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: repository@digest, else
repository:tag, the tag defaulting to the chart's appVersion.
Call: include "accelgen.image" (dict "image" .Values.operator.image "what" "operator.image" "context" $)
*/}}
{{- define "accelgen.image" -}}
{{- $repo := required (printf "accelgen: %s.repository is required" .what) .image.repository }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .context.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* The operator's command-line arguments after `accelgen-operator run`. */}}
{{- define "accelgen.operatorArgs" -}}
- run
{{- range .Values.operator.namespaces }}
- --namespace={{ . }}
{{- end }}
{{- if .Values.operator.peering.enabled }}
- --peering={{ .Values.operator.peering.name }}
- --priority={{ .Values.operator.peering.priority }}
{{- else }}
- --standalone
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.operator.livenessPort }}/healthz
- --stats-interval={{ .Values.operator.statsIntervalSeconds }}
- --stats-timeout={{ .Values.operator.statsTimeoutSeconds }}
{{- if .Values.operator.verbose }}
- --verbose
{{- end }}
{{- end }}
