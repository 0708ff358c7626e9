{{/*
Names and labels shared by every template of the insitu chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "insitu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name (with the chart
name appended unless the release name already contains it). Kept short so that suffixes such
as "-dispatcher" stay within Kubernetes' 63-character label limit.
*/}}
{{- define "insitu.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "insitu.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "insitu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: insitu
{{- end }}

{{/* Labels that select the release's pods (a component label narrows them further). */}}
{{- define "insitu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "insitu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount of the API and the dispatcher. */}}
{{- define "insitu.serviceAccountName" -}}
{{- default (include "insitu.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The image reference. */}}
{{- define "insitu.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The API's in-cluster address. */}}
{{- define "insitu.serviceUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "insitu.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/* The base URL clients use: url, else the first Ingress host, else the Service. */}}
{{- define "insitu.url" -}}
{{- if .Values.url }}
{{- .Values.url }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := first .Values.ingress.hosts }}
{{- $tls := false }}
{{- range .Values.ingress.tls }}
{{- if has $host .hosts }}{{ $tls = true }}{{ end }}
{{- end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- else }}
{{- include "insitu.serviceUrl" . }}
{{- end }}
{{- end }}

{{/*
The pod-level security context: a fixed non-root identity and the RuntimeDefault seccomp
profile; only the ids come from values.
*/}}
{{- define "insitu.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The container-level security context: nothing here is configurable. */}}
{{- define "insitu.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The environment both containers share: the ConfigMap, and the secrets by reference only.
*/}}
{{- define "insitu.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "insitu.fullname" . }}
env:
  {{- /* Libraries that keep files under ~ (dask, matplotlib) need a writable home. */}}
  - name: HOME
    value: {{ include "insitu.home" . | dir }}
  - name: INSITU_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ .Values.database.existingSecret }}
        key: {{ .Values.database.secretKey }}
{{- with .Values.adminToken.existingSecret }}
  - name: INSITU_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: {{ $.Values.adminToken.secretKey }}
{{- end }}
{{- with .Values.storage.existingSecret }}
  - name: INSITU_STORAGE__ACCESS_KEY_ID
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: access-key-id
  - name: INSITU_STORAGE__SECRET_ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: secret-access-key
{{- end }}
{{- end }}

{{/*
INSITU_HOME (admin token, scratch). It is a folder inside the mounted volume, not the mount
point itself: insitu creates its home and makes it private (mode 700), which only the
folder's owner may do, and a volume's mount point belongs to root.
*/}}
{{- define "insitu.home" -}}
/var/lib/insitu/home
{{- end }}

{{/* Writable scratch: the root file system is read-only. */}}
{{- define "insitu.volumeMounts" -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: home
    mountPath: {{ include "insitu.home" . | dir }}
{{- end }}

{{- define "insitu.volumes" -}}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ .Values.scratchSizeLimit }}
  - name: home
    emptyDir:
      sizeLimit: {{ .Values.scratchSizeLimit }}
{{- end }}

{{/* Scheduling constraints of one component: pass (dict "values" .Values.api). */}}
{{- define "insitu.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
