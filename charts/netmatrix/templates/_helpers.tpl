{{/*
Names. Resources are named after the release: "netmatrix" when the release
is called netmatrix, "<release>-netmatrix" otherwise.
*/}}
{{- define "netmatrix.fullname" -}}
{{- if contains "netmatrix" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-netmatrix" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "netmatrix.name" -}}{{ include "netmatrix.fullname" .root }}-{{ .component }}{{- end -}}

{{/* Labels of every object. */}}
{{- define "netmatrix.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "netmatrix.selectorLabels" . }}
{{- end -}}

{{/*
Selector labels. The binaries find each other by these labels
(api/src/labels.rs): app.kubernetes.io/name=netmatrix and the component.
*/}}
{{- define "netmatrix.selectorLabels" -}}
app.kubernetes.io/name: netmatrix
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "netmatrix.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "netmatrix.serviceAccountName" -}}
{{- if .root.Values.rbac.create -}}{{ include "netmatrix.name" . }}{{- else -}}default{{- end -}}
{{- end -}}

{{/*
ServiceAccount names whose tokens the aggregator accepts reports from: the
agent's and, when enabled, the host agent's (both "default" without RBAC).
*/}}
{{- define "netmatrix.agentServiceAccounts" -}}
{{- $names := list (include "netmatrix.serviceAccountName" (dict "root" . "component" "agent")) -}}
{{- if .Values.hostAgent.enabled -}}
{{- $names = append $names (include "netmatrix.serviceAccountName" (dict "root" . "component" "host-agent")) -}}
{{- end -}}
{{- join "," (uniq $names) -}}
{{- end -}}

{{/*
The agents' identity towards the aggregator: a projected ServiceAccount token
for the chart's audience, rotated by the kubelet, at the path the agent reads
by default (--token-file). The usual API token stays mounted: the agents
still watch the API.
*/}}
{{- define "netmatrix.tokenDir" -}}/var/run/secrets/netmatrix.io{{- end -}}

{{- define "netmatrix.tokenVolume" -}}
- name: netmatrix-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ .Values.tokenAudience | quote }}
          expirationSeconds: {{ .Values.agent.tokenExpirationSeconds | int64 }}
{{- end -}}

{{- define "netmatrix.tokenVolumeMount" -}}
- name: netmatrix-token
  mountPath: {{ include "netmatrix.tokenDir" . }}
  readOnly: true
{{- end -}}

{{/*
The agents' state: the last pinglist, kept in an emptyDir so that a
restarted container probes it before the aggregator answers (the root
filesystem is read-only). Outlives the container, not the pod.
*/}}
{{- define "netmatrix.stateDir" -}}/var/lib/netmatrix{{- end -}}

{{- define "netmatrix.stateVolume" -}}
- name: state
  emptyDir:
    sizeLimit: 32Mi
{{- end -}}

{{- define "netmatrix.stateVolumeMount" -}}
- name: state
  mountPath: {{ include "netmatrix.stateDir" . }}
{{- end -}}

{{/* The sampling settings, for whoever computes the peers. */}}
{{- define "netmatrix.samplingEnv" -}}
- name: NETMATRIX_FULL_MESH_MAX_NODES
  value: {{ .Values.sampling.fullMeshMaxNodes | int64 | quote }}
- name: NETMATRIX_SAMPLED_NODES
  value: {{ .Values.sampling.sampledNodes | int64 | quote }}
- name: NETMATRIX_ROTATING_NODES
  value: {{ .Values.sampling.rotatingNodes | int64 | quote }}
{{- end -}}

{{/* The node's primary address, for listeners on the host network. */}}
{{- define "netmatrix.hostIPEnv" -}}
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end -}}

{{/* Service names, and the environment variables the kubelet derives from them. */}}
{{- define "netmatrix.aggregatorService" -}}{{ include "netmatrix.fullname" . }}-aggregator{{- end -}}
{{- define "netmatrix.agentsService" -}}{{ include "netmatrix.fullname" . }}-agents{{- end -}}
{{- define "netmatrix.companionsService" -}}{{ include "netmatrix.fullname" . }}-companions{{- end -}}
{{- define "netmatrix.serviceEnv" -}}{{ . | upper | replace "-" "_" }}{{- end -}}

{{- define "netmatrix.aggregatorUrl" -}}
http://{{ include "netmatrix.aggregatorService" . }}.{{ .Release.Namespace }}.svc:{{ .Values.aggregator.service.port }}
{{- end -}}

{{/* Pod security shared by every pod. ICMP sysctl is added by the agent. */}}
{{- define "netmatrix.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "netmatrix.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Downward-API identity of an agent. */}}
{{- define "netmatrix.downwardEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/*
Environment of both agents (pod and host network). The ClusterIP checks use
the Service environment variables the kubelet injects (Helm creates Services
before DaemonSets, so they exist when the agent pods start); the kubelet
expands $(VAR) references to them.
*/}}
{{- define "netmatrix.agentEnv" -}}
{{ include "netmatrix.downwardEnv" . }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: NETMATRIX_INTERVAL
  value: {{ .Values.interval | quote }}
- name: NETMATRIX_AGGREGATOR_URL
  value: {{ include "netmatrix.aggregatorUrl" . | quote }}
- name: NETMATRIX_AGGREGATOR_PORT
  value: {{ .Values.aggregator.port | quote }}
- name: NETMATRIX_TOKEN_FILE
  value: {{ printf "%s/token" (include "netmatrix.tokenDir" .) | quote }}
- name: NETMATRIX_PEER_DISCOVERY
  value: {{ .Values.peerDiscovery | quote }}
{{- if eq .Values.peerDiscovery "aggregator" }}
- name: NETMATRIX_PINGLIST_FILE
  value: {{ printf "%s/pinglist.json" (include "netmatrix.stateDir" .) | quote }}
{{- else }}
{{ include "netmatrix.samplingEnv" . }}
{{- end }}
- name: NETMATRIX_SRV_NAME
  value: {{ printf "_metrics._tcp.%s.%s.svc.%s." (include "netmatrix.agentsService" .) .Release.Namespace (trimSuffix "." .Values.clusterDomain) | quote }}
{{- $agg := include "netmatrix.serviceEnv" (include "netmatrix.aggregatorService" .) }}
{{- $comp := include "netmatrix.serviceEnv" (include "netmatrix.companionsService" .) }}
{{- $ips := list (printf "aggregator=$(%s_SERVICE_HOST):$(%s_SERVICE_PORT)" $agg $agg) }}
{{- if .Values.companion.enabled }}
{{- $ips = append $ips (printf "companions=$(%s_SERVICE_HOST):$(%s_SERVICE_PORT)" $comp $comp) }}
{{- end }}
{{- $ips = concat $ips .Values.agent.extraClusterIPs }}
- name: NETMATRIX_CLUSTERIPS
  value: {{ join "," $ips | quote }}
{{- with .Values.agent.dnsNames }}
- name: NETMATRIX_DNS_NAMES
  value: {{ join "," . | quote }}
{{- else }}
- name: NETMATRIX_DNS_NAMES
  value: {{ printf "kubernetes.default.svc.%s.=$(KUBERNETES_SERVICE_HOST)" (trimSuffix "." .Values.clusterDomain) | quote }}
{{- end }}
{{- end -}}
