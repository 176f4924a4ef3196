package control

import (
	"sigs.k8s.io/yaml"

	"github.com/kone-dev/kone/pkg/config"
)

// ProfileFiles are the files --profile=cis has the apiserver read, path by path, for the
// configuration c: the admission configuration (Pod Security's restricted level everywhere but
// the exempt namespaces, and a limit on events) and the audit policy. None without the profile.
func ProfileFiles(c *config.Config, f Files) (map[string][]byte, error) {
	if c.Node.Profile != config.ProfileCIS {
		return nil, nil
	}
	const latest = "latest"
	admission := map[string]any{
		"apiVersion": "apiserver.config.k8s.io/v1",
		"kind":       "AdmissionConfiguration",
		"plugins": []any{
			map[string]any{"name": "PodSecurity", "configuration": map[string]any{
				"apiVersion": "pod-security.admission.config.k8s.io/v1",
				"kind":       "PodSecurityConfiguration",
				"defaults": map[string]string{
					"enforce": "restricted", "enforce-version": latest,
					"audit": "restricted", "audit-version": latest,
					"warn": "restricted", "warn-version": latest,
				},
				"exemptions": map[string]any{"usernames": []string{}, "runtimeClasses": []string{}, "namespaces": c.PodSecurityExempt},
			}},
			// A node or controller gone wrong cannot flood etcd, and the flash under it, with events.
			map[string]any{"name": "EventRateLimit", "configuration": map[string]any{
				"apiVersion": "eventratelimit.admission.k8s.io/v1alpha1",
				"kind":       "Configuration",
				"limits": []any{
					map[string]any{"type": "Server", "qps": 500, "burst": 1000},
					map[string]any{"type": "Namespace", "qps": 50, "burst": 100, "cacheSize": 200},
				},
			}},
		},
	}
	data, err := yaml.Marshal(admission)
	if err != nil {
		return nil, err
	}
	return map[string][]byte{f.AdmissionConfig: data, f.AuditPolicy: []byte(auditPolicy)}, nil
}

// auditPolicy records who did what to which object, and never the content of a request: Secrets,
// ConfigMaps and token reviews carry credentials, and content would fill a small disk. What a
// healthy cluster does all the time (leases, events, health checks, watches) is left out.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources:
  - group: coordination.k8s.io
    resources: [leases]
  - group: ""
    resources: [events]
  - group: events.k8s.io
    resources: [events]
- level: None
  verbs: [watch]
- level: None
  nonResourceURLs: ["/healthz*", "/livez*", "/readyz*", /version, /metrics]
- level: Metadata
`
