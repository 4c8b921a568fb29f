{{- define "pilotfish.labels" -}}
app.kubernetes.io/name: pilotfish
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pilotfish
{{- end }}
{{- define "pilotfish.selector" -}}
app.kubernetes.io/name: pilotfish
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "pilotfish.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}
