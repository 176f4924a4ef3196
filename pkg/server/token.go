package server

import (
	"errors"
	"fmt"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/token"
)

// loadToken returns the server's join token, creating it on first start from --token or at
// random. The token file is the source of truth afterwards: a --token that disagrees with it is
// an error rather than a silent change of the cluster's secret.
func loadToken(files token.ServerFiles, given, caFile string, log *logrus.Logger) (token.Token, error) {
	path := files.Token
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return token.Token{}, fmt.Errorf("read cluster CA: %w", err)
	}
	var want token.Token
	if given != "" {
		if want, err = token.Parse(given); err != nil {
			return token.Token{}, fmt.Errorf("--token: %w", err)
		}
		if err := want.CheckCA(caPEM); err != nil {
			return token.Token{}, fmt.Errorf("--token: %w", err)
		}
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		stored, err := token.Parse(string(data))
		if err == nil {
			err = stored.CheckCA(caPEM)
		}
		if err != nil {
			return token.Token{}, fmt.Errorf("token file %s: %w; restore it from a backup", path, err)
		}
		if given != "" && (want.ID != stored.ID || want.Secret != stored.Secret) {
			if files.WasSuperseded(want.ID) {
				log.Warnf("--token is a token that `kone token rotate` replaced; the server uses the one in %s: update --token, or drop it", path)
				return stored, nil
			}
			return token.Token{}, fmt.Errorf("--token differs from the server's token in %s (set up with it, or made by `kone token rotate`): drop --token, or give that token", path)
		}
		return stored, nil
	case !errors.Is(err, os.ErrNotExist):
		return token.Token{}, fmt.Errorf("read token file: %w", err)
	}
	if given == "" {
		if want, err = token.Generate(); err != nil {
			return token.Token{}, err
		}
	}
	if want, err = want.WithCA(caPEM); err != nil {
		return token.Token{}, err
	}
	if err := pki.WriteFile(path, want.File(), 0o600); err != nil {
		return token.Token{}, err
	}
	return want, nil
}
