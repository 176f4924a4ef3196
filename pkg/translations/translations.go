// Package translations keeps kubectl's message catalogue out of the kone processes that never
// print kubectl's help. kubectl's packages translate their help texts in package variables, so
// the first one initialised loads and parses the catalogue: 4 MiB and 50 ms in every kone
// process, the server, the agent and its containerd child included, for messages only
// `kone kubectl` shows. Imported by package main, this package is initialised before any of
// kubectl's (package initialisation goes in import-path order, and github.com/kone-dev sorts
// before k8s.io), and swaps kubectl's loader for one that loads only in a kubectl process.
package translations

import (
	"os"
	"path/filepath"

	"k8s.io/kubectl/pkg/util/i18n"
)

func init() {
	load := i18n.LoadTranslationsFunc
	_ = i18n.SetLoadTranslationsFunc(func() error {
		if !RunsKubectl(os.Args) {
			return nil
		}
		return load()
	})
}

// RunsKubectl reports whether a kone process started with args runs kubectl: called as
// kubectl through a link, or as `kone kubectl`.
func RunsKubectl(args []string) bool {
	if len(args) == 0 {
		return false
	}
	return filepath.Base(args[0]) == "kubectl" || (len(args) > 1 && args[1] == "kubectl")
}
