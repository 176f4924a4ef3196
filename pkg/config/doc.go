// Package config builds kone's one typed configuration.
//
// Every setting is a command-line flag bound straight into a Config field through a typed
// pflag.Value, so the same parser validates a value whether it came from the command line,
// /etc/kone/config.yaml, a drop-in in /etc/kone/config.yaml.d/, or a KONE_* environment
// variable. Layers apply in that order, each overriding the one before; the command line wins.
// Load returns a Config that the rest of kone treats as read-only.
package config
