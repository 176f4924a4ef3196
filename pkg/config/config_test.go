package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// load runs Load the way `kone server` does: command line first, then the layers.
func load(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	return loadWith(BindServerFlags, args, env)
}

// loadAgent runs Load the way `kone agent` does.
func loadAgent(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	return loadWith(BindAgentFlags, args, env)
}

func loadWith(bind func(*pflag.FlagSet, *Config), args []string, env map[string]string) (*Config, error) {
	c := &Config{}
	fs := pflag.NewFlagSet("kone", pflag.ContinueOnError)
	bind(fs, c)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return c, Load(fs, c, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDefaults(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "config.yaml")
	write(t, empty, "")
	c, err := load(t, []string{"--config", empty}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterCIDR.String() != "10.42.0.0/16" || c.ServiceCIDR.String() != "10.43.0.0/16" ||
		c.ClusterDNS.String() != "10.43.0.10" || c.ClusterDomain != "cluster.local" ||
		c.HTTPSPort != 6443 || c.DataDir != "/var/lib/kone" || c.WriteKubeconfig != "/etc/kone/kone.yaml" ||
		c.WriteKubeconfigMode != 0o600 || c.BindAddress.String() != "0.0.0.0" ||
		c.EtcdSnapshotCron != "0 */12 * * *" || c.EtcdSnapshotRetention != 5 || c.EtcdDisableSnapshots ||
		c.SnapshotDir() != "/var/lib/kone/server/db/snapshots" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
}

func TestConfigFileIsOptionalUnlessNamed(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "config.yaml")
	if files, err := configFiles(absent, false); err != nil || len(files) != 0 {
		t.Fatalf("default file absent: got %v, %v", files, err)
	}
	if _, err := configFiles(absent, true); err == nil || !strings.Contains(err.Error(), absent) {
		t.Fatalf("named file absent: got %v", err)
	}
	if _, err := load(t, nil, map[string]string{"KONE_CONFIG": absent}); err == nil {
		t.Fatal("a file named by KONE_CONFIG that does not exist must be an error")
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	write(t, file, `
cluster-domain: file.local
https-listen-port: 7000
tls-san: [a.example, b.example]
kube-apiserver-arg:
- v=1
write-kubeconfig-mode: 0644
data-dir: /file
debug: true
`)
	write(t, filepath.Join(dir, "config.yaml.d", "20-second.yaml"), "https-listen-port: 7002\ndata-dir: /second\n")
	write(t, filepath.Join(dir, "config.yaml.d", "10-first.yaml"), "https-listen-port: 7001\ntls-san: c.example\ndata-dir: /first\n")
	write(t, filepath.Join(dir, "config.yaml.d", "ignored.txt"), "not: yaml: at all")
	env := map[string]string{"KONE_DATA_DIR": "/env", "KONE_CLUSTER_DNS": "10.43.0.53"}

	c, err := load(t, []string{"--config", file, "--cluster-dns", "10.43.0.99"}, env)
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string][2]any{
		"file value":                  {c.ClusterDomain, "file.local"},
		"last drop-in wins":           {c.HTTPSPort, 7002},
		"drop-in list replaces":       {strings.Join(c.TLSSANs, ","), "c.example"},
		"list from file":              {strings.Join(c.APIServerArgs, ","), "v=1"},
		"octal mode as written":       {c.WriteKubeconfigMode, uint32(0o644)},
		"env beats files":             {c.DataDir, "/env"},
		"command line beats env":      {c.ClusterDNS.String(), "10.43.0.99"},
		"bool from file":              {c.Debug, true},
		"config path from flag/stays": {c.ConfigFile, file},
	}
	for name, v := range checks {
		if v[0] != v[1] {
			t.Errorf("%s: got %v, want %v", name, v[0], v[1])
		}
	}

	// A list from the environment is comma-separated; KONE_CONFIG picks the file.
	c, err = load(t, nil, map[string]string{"KONE_CONFIG": file, "KONE_TLS_SAN": "x.example,y.example"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.TLSSANs, ","); got != "x.example,y.example" || c.ClusterDomain != "file.local" {
		t.Errorf("env: tls-san %q, cluster-domain %q", got, c.ClusterDomain)
	}
}

func TestErrors(t *testing.T) {
	cases := []struct {
		name, file string
		env        map[string]string
		args       []string
		want       []string // every fragment must be in the error
	}{
		{name: "unknown key", file: "cluster-cidr: 10.42.0.0/16\nclutser-dns: 10.43.0.10\n", want: []string{"config.yaml", "line 2", `"clutser-dns"`, "unknown key"}},
		{name: "config key in file", file: "config: /x.yaml\n", want: []string{`"config"`, "unknown key"}},
		{name: "bad cidr", file: "cluster-cidr: 10.42.0.0/33\n", want: []string{`"cluster-cidr"`, "not a CIDR", "10.42.0.0/16"}},
		{name: "host bits", file: "service-cidr: 10.43.0.1/16\n", want: []string{`"service-cidr"`, "host bits"}},
		{name: "bad ip", file: "cluster-dns: ten\n", want: []string{`"cluster-dns"`, "not an IP address"}},
		{name: "bad port", file: "https-listen-port: 70000\n", want: []string{`"https-listen-port"`, "1 to 65535"}},
		{name: "bad mode", file: "write-kubeconfig-mode: rw\n", want: []string{`"write-kubeconfig-mode"`, "octal"}},
		{name: "bad bool", file: "debug: maybe\n", want: []string{`"debug"`, "true or false"}},
		{name: "list for scalar", file: "cluster-domain: [a, b]\n", want: []string{`"cluster-domain"`, "single value"}},
		{name: "map for list", file: "tls-san: {a: b}\n", want: []string{`"tls-san"`, "list"}},
		{name: "empty value", file: "cluster-domain:\n", want: []string{`"cluster-domain"`, "no value"}},
		{name: "bad component arg", file: "kube-apiserver-arg: [novalue]\n", want: []string{`"kube-apiserver-arg"`, "key=value"}},
		{name: "not yaml", file: "a: [\n", want: []string{"config.yaml", "not valid YAML"}},
		{name: "not a mapping", file: "- a\n- b\n", want: []string{"config.yaml", "mapping"}},
		{name: "env", env: map[string]string{"KONE_HTTPS_LISTEN_PORT": "x"}, want: []string{"KONE_HTTPS_LISTEN_PORT", "1 to 65535"}},
		{name: "dns outside services", args: []string{"--cluster-dns", "10.42.0.10"}, want: []string{"--cluster-dns", "not inside --service-cidr"}},
		{name: "overlap", args: []string{"--cluster-cidr", "10.0.0.0/8", "--service-cidr", "10.43.0.0/16"}, want: []string{"overlap"}},
		{name: "small pod network", args: []string{"--cluster-cidr", "10.42.0.0/24"}, want: []string{"too small"}},
		{name: "relative data dir", args: []string{"--data-dir", "kone"}, want: []string{"--data-dir", "absolute"}},
		{name: "bad domain", args: []string{"--cluster-domain", "Bad_Domain"}, want: []string{"--cluster-domain", "DNS name"}},
		{name: "bad token", args: []string{"--token", "short"}, want: []string{"--token", "too short"}},
		{name: "same ports", args: []string{"--etcd-client-port", "6443"}, want: []string{"must all differ"}},
		{name: "bad snapshot schedule", file: "etcd-snapshot-schedule-cron: every day\n", want: []string{"--etcd-snapshot-schedule-cron", "every day", "0 */12 * * *"}},
		{name: "no snapshots kept", args: []string{"--etcd-snapshot-retention", "0"}, want: []string{"--etcd-snapshot-retention", "--etcd-disable-snapshots"}},
		{name: "restore without reset", args: []string{"--cluster-reset-restore-path", "/tmp/s.db.gz"}, want: []string{"--cluster-reset-restore-path", "--cluster-reset"}},
		{name: "relative snapshot dir", args: []string{"--etcd-snapshot-dir", "snaps"}, want: []string{"--etcd-snapshot-dir", "absolute"}},
		{name: "bad san", args: []string{"--tls-san", "a b"}, want: []string{"--tls-san", "neither"}},
		{name: "join without token", args: []string{"--server", "https://10.0.0.1:6443"}, want: []string{"--server without --token", "server token"}},
		{name: "join no URL", args: []string{"--server", "10.0.0.1", "--token", "abcdef.0123456789abcdef"}, want: []string{"--server", "expected the server's URL"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "config.yaml")
			write(t, file, tc.file)
			_, err := load(t, append([]string{"--config", file}, tc.args...), tc.env)
			if err == nil {
				t.Fatal("expected an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestCommandLineValuesAreValidatedToo(t *testing.T) {
	if _, err := load(t, []string{"--cluster-cidr", "nonsense"}, nil); err == nil || !strings.Contains(err.Error(), "not a CIDR") {
		t.Fatalf("got %v", err)
	}
}

func TestCommandLineListIsNotMergedWithFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	write(t, file, "tls-san: [from.file]\nkube-apiserver-arg: [v=1]\n")
	c, err := load(t, []string{"--config", file, "--tls-san", "from.flag", "--kube-apiserver-arg", "v=3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.TLSSANs, ",") != "from.flag" || strings.Join(c.APIServerArgs, ",") != "v=3" {
		t.Fatalf("got tls-san %v, args %v", c.TLSSANs, c.APIServerArgs)
	}
}

func TestNodeSettings(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "config.yaml")
	write(t, empty, "node-label:\n  - zone=a\n  - tier=edge\nnode-taint: [dedicated=edge:NoSchedule]\nkubelet-arg: [max-pods=50]\ndisable: [coredns]\nnode-external-ip: [203.0.113.7, \"2001:db8::7\"]\n")
	c, err := load(t, []string{"--config", empty, "--node-name", "edge-1", "--node-ip", "192.168.1.10"}, map[string]string{"KONE_KUBE_PROXY_ARG": "proxy-mode=nftables"})
	if err != nil {
		t.Fatal(err)
	}
	n := c.Node
	if n.Name != "edge-1" || n.IP.String() != "192.168.1.10" || strings.Join(n.Labels, ",") != "zone=a,tier=edge" ||
		strings.Join(n.Taints, ",") != "dedicated=edge:NoSchedule" || strings.Join(n.KubeletArgs, ",") != "max-pods=50" ||
		strings.Join(n.ProxyArgs, ",") != "proxy-mode=nftables" || !n.Disabled(DisableCoreDNS) ||
		len(n.ExternalIPs) != 2 || n.ExternalIPs[0].String() != "203.0.113.7" || n.ExternalIPs[1].String() != "2001:db8::7" {
		t.Fatalf("node settings: %+v", n)
	}
}

func TestNodeSettingErrors(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "config.yaml")
	write(t, empty, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-name", "Edge_1"}, "--node-name"},
		{[]string{"--node-ip", "300.1.1.1"}, "not an IP address"},
		{[]string{"--node-external-ip", "example.com"}, "--node-external-ip"},
		{[]string{"--node-label", "novalue"}, "--node-label"},
		{[]string{"--node-taint", "k=v:Sometimes"}, "--node-taint"},
		{[]string{"--node-taint", "k=v"}, "--node-taint"},
		{[]string{"--disable", "traefik"}, "--disable"},
		{[]string{"--kubelet-arg", "novalue"}, "key=value"},
	} {
		_, err := load(t, append([]string{"--config", empty}, c.args...), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error naming %q", c.args, err, c.want)
		}
	}
}

const testToken = "K10" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + "::abcdef.0123456789abcdef"

func TestAgentSettings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	write(t, file, "node-label: [zone=a]\n")
	c, err := loadAgent(t, []string{"--config", file}, map[string]string{"KONE_URL": "https://10.0.0.1:6443", "KONE_TOKEN": testToken})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Agent || c.Server != "https://10.0.0.1:6443" || c.Token != testToken || strings.Join(c.Node.Labels, ",") != "zone=a" {
		t.Fatalf("agent settings: %+v", c)
	}
	tokenFile := filepath.Join(dir, "token")
	write(t, tokenFile, testToken+"\n")
	write(t, file, "server: https://server.example:6443\n")
	c, err = loadAgent(t, []string{"--config", file}, map[string]string{"KONE_TOKEN_FILE": tokenFile})
	if err != nil || c.Token != testToken || c.Server != "https://server.example:6443" {
		t.Fatalf("token file and server from the config file: %+v %v", c, err)
	}
}

func TestAgentSettingErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "config.yaml")
	write(t, empty, "")
	emptyToken := filepath.Join(dir, "empty-token")
	write(t, emptyToken, "\n")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--token", testToken}, "no server to join"},
		{[]string{"--server", "https://10.0.0.1:6443"}, "no join token"},
		{[]string{"--server", "http://10.0.0.1:6443", "--token", testToken}, "--server"},
		{[]string{"--server", "10.0.0.1", "--token", testToken}, "--server"},
		{[]string{"--server", "https://10.0.0.1:6443", "--token", "short"}, "--token"},
		{[]string{"--server", "https://10.0.0.1:6443", "--token", testToken, "--token-file", emptyToken}, "only one"},
		{[]string{"--server", "https://10.0.0.1:6443", "--token-file", emptyToken}, "is empty"},
		{[]string{"--server", "https://10.0.0.1:6443", "--token-file", filepath.Join(dir, "absent")}, "--token-file"},
		{[]string{"--server", "https://10.0.0.1:6443", "--token", testToken, "--node-name", "Bad_Name"}, "--node-name"},
	} {
		_, err := loadAgent(t, append([]string{"--config", empty}, c.args...), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error naming %q", c.args, err, c.want)
		}
	}
	// Server-only settings are unknown to an agent's config file.
	write(t, empty, "cluster-cidr: 10.42.0.0/16\n")
	if _, err := loadAgent(t, []string{"--config", empty, "--server", "https://10.0.0.1:6443", "--token", testToken}, nil); err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Errorf("a server setting in an agent's config: %v", err)
	}
}

func TestFlannelBackend(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "config.yaml")
	write(t, empty, "")
	c, err := load(t, []string{"--config", empty}, nil)
	if err != nil || c.FlannelBackend != FlannelVXLAN {
		t.Fatalf("default backend: %q %v", c.FlannelBackend, err)
	}
	if _, err := load(t, []string{"--config", empty, "--flannel-backend", "wireguard"}, nil); err == nil || !strings.Contains(err.Error(), "--flannel-backend") {
		t.Errorf("an unknown backend: %v", err)
	}
}

// Every address and network flag refuses IPv6 up front, naming the flag, from the command line
// and from the config file alike: the node side is IPv4 only and would fail later.
// --node-external-ip is only published on the Node, and may be IPv6.
func TestIPv6IsRefusedUpFront(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "config.yaml")
	write(t, empty, "")
	for flag, value := range map[string]string{
		"cluster-cidr": "fd00:42::/56", "service-cidr": "fd00:43::/112", "cluster-dns": "fd00:43::a",
		"bind-address": "::", "advertise-address": "fd00::1", "node-ip": "fd00::2",
	} {
		_, err := load(t, []string{"--config", empty, "--" + flag, value}, nil)
		if err == nil || !strings.Contains(err.Error(), "--"+flag) || !strings.Contains(err.Error(), "IPv6 is not supported yet") {
			t.Errorf("--%s %s: %v", flag, value, err)
		}
		file := filepath.Join(dir, flag+".yaml")
		write(t, file, flag+": \""+value+"\"\n")
		if _, err := load(t, []string{"--config", file}, nil); err == nil || !strings.Contains(err.Error(), flag) || !strings.Contains(err.Error(), "IPv6 is not supported yet") {
			t.Errorf("%s: %s in %s: %v", flag, value, file, err)
		}
	}
	if _, err := loadAgent(t, []string{"--config", empty, "--server", "https://10.0.0.1:6443", "--token", testToken, "--node-ip", "fd00::2"}, nil); err == nil ||
		!strings.Contains(err.Error(), "IPv6 is not supported yet") {
		t.Errorf("agent --node-ip fd00::2: %v", err)
	}
}
