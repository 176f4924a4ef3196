// Command kone is a Kubernetes distribution in one binary. Called as kubectl or ctr (through a
// link) it is that tool, and called as containerd it is the node's containerd, which kone runs as
// a child process; otherwise its subcommands run a server or manage one.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/kone-dev/kone/pkg/cli"
	"github.com/kone-dev/kone/pkg/containerized"
	"github.com/kone-dev/kone/pkg/memory"
	// Before kubectl's packages, so that only kubectl loads its translations.
	_ "github.com/kone-dev/kone/pkg/translations"
)

func main() {
	// component-base registers its own --version on pflag's global flag set at init, and cobra
	// merges that set into every root command; kone's --version is cobra's.
	pflag.CommandLine = pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)
	// CoreDNS registers -conf, -version, -p and more on Go's global flag set at init; kone's
	// own flags are cobra's, and kubectl would otherwise show (and clash with) CoreDNS's.
	flag.CommandLine = flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	if containerized.IsInit() {
		// A container's init: kone runs as its child, and this process reaps what is orphaned.
		// Without /proc there is no way to find the executable again: kone runs as it is.
		if exe, err := os.Executable(); err == nil {
			code, err := containerized.RunAsInit(exe, os.Args)
			if err != nil {
				fmt.Fprintln(os.Stderr, "kone:", err)
				code = 1
			}
			os.Exit(code)
		}
	}
	_ = memory.RandomAccessExecutable()
	var err error
	switch filepath.Base(os.Args[0]) {
	case "kubectl":
		err = cli.Kubectl(os.Args[1:])
	case "ctr":
		err = cli.Ctr(os.Args[1:])
	case "containerd":
		err = cli.Containerd(os.Args[1:])
	default:
		err = cli.New().Execute()
	}
	if err != nil {
		msg, code := cli.AsExit(err)
		if msg != "" {
			fmt.Fprintln(os.Stderr, msg)
		}
		os.Exit(code)
	}
}
