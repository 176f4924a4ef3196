// Package args builds the command-line flags kone passes to the upstream components: kone's
// own settings first, then the user's key=value overrides (--kube-apiserver-arg and the like).
package args

import (
	"sort"
	"strings"
)

// Split splits a key=value override into its key, without leading dashes, and its value.
func Split(override string) (key, value string) {
	k, v, _ := strings.Cut(override, "=")
	return strings.TrimLeft(k, "-"), v
}

// Merge applies key=value overrides to defaults and returns --key=value flags in a stable order.
// An override's key may carry leading dashes.
func Merge(defaults map[string]string, overrides []string) []string {
	for _, o := range overrides {
		k, v := Split(o)
		defaults[k] = v
	}
	out := make([]string, 0, len(defaults))
	for k, v := range defaults {
		out = append(out, "--"+k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Override returns the value that the key=value overrides give key (the last, as Merge takes
// it), and whether they give it one.
func Override(overrides []string, key string) (string, bool) {
	value, found := "", false
	for _, o := range overrides {
		if k, v := Split(o); k == key {
			value, found = v, true
		}
	}
	return value, found
}

// Value returns the value of --key in flags built by Merge.
func Value(flags []string, key string) string {
	for _, a := range flags {
		if v, ok := strings.CutPrefix(a, "--"+key+"="); ok {
			return v
		}
	}
	return ""
}
