// Package manifests holds the cluster objects that kone itself owns, as YAML, embedded in the
// binary. A server applies them as it starts (pkg/deploy), so each kone version brings its own
// and puts back what was changed by hand. They name identities and objects that kone's Go
// code names too (groups, users, ConfigMaps); a test holds the two together.
package manifests

import (
	"embed"
	"io/fs"
)

//go:embed *.yaml
var files embed.FS

// Files are the manifests, a YAML file per part of kone, each of one or more documents.
func Files() fs.FS { return files }
