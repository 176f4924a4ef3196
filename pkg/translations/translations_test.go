package translations

import (
	"testing"

	"k8s.io/kubectl/pkg/util/i18n"
)

// A message that kubectl's French catalogue translates.
const message = "Display clusters defined in the kubeconfig"

func TestNotLoadedOutsideKubectl(t *testing.T) {
	t.Setenv("LC_ALL", "fr_FR.UTF-8")
	// This test binary is no kubectl: the catalogue stays unloaded and messages untranslated.
	if got := i18n.T(message); got != message {
		t.Fatalf("translated to %q outside kubectl", got)
	}
	// The same message with the catalogue loaded, as `kone kubectl` would: translated.
	if err := i18n.LoadTranslations("kubectl", func() string { return "fr_FR" }); err != nil {
		t.Fatal(err)
	}
	if got := i18n.T(message); got == message {
		t.Fatalf("still %q with the French catalogue loaded", got)
	}
}

func TestRunsKubectl(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"/usr/local/bin/kubectl", "get", "pods"}, true},
		{[]string{"kone", "kubectl", "get", "pods"}, true},
		{[]string{"/usr/local/bin/kone", "server"}, false},
		{[]string{"containerd", "--config", "x"}, false},
		{[]string{"kone", "agent", "--node-name", "kubectl"}, false},
		{nil, false},
	} {
		if got := RunsKubectl(c.args); got != c.want {
			t.Errorf("RunsKubectl(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
