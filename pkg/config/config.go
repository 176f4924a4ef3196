package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/snapshot"
	"github.com/kone-dev/kone/pkg/token"
)

// Defaults users know from k3s, under kone's name.
const (
	DefaultConfigFile = "/etc/kone/config.yaml"
	DefaultDataDir    = "/var/lib/kone"
	DefaultKubeconfig = "/etc/kone/kone.yaml"
	envPrefix         = "KONE_"
)

// Config is the whole of one kone process's settings. It is filled once by Load and then only read.
type Config struct {
	ConfigFile string
	DataDir    string
	Debug      bool

	BindAddress      net.IP
	AdvertiseAddress net.IP
	HTTPSPort        int
	TLSSANs          []string

	ClusterCIDR   *net.IPNet
	ServiceCIDR   *net.IPNet
	ClusterDNS    net.IP
	ClusterDomain string

	Token string

	WriteKubeconfig     string
	WriteKubeconfigMode uint32

	EtcdClientPort int
	EtcdPeerPort   int

	APIServerArgs         []string
	ControllerManagerArgs []string
	SchedulerArgs         []string
	EtcdArgs              []string

	DisableAgent bool

	// Snapshots of etcd, with k3s's flags: where they go (empty: SnapshotDir's default), when
	// they are taken and how many scheduled ones are kept.
	EtcdSnapshotDir       string
	EtcdSnapshotCron      string
	EtcdSnapshotRetention int
	EtcdDisableSnapshots  bool
	// ClusterReset makes this server's etcd member a cluster of one again before it starts:
	// from the snapshot ClusterResetRestorePath names, or from its own data.
	ClusterReset            bool
	ClusterResetRestorePath string

	// Manifests is the auto-deploy directory (empty: ManifestsDir's default).
	Manifests string

	// SecretsEncryption encrypts Secrets in etcd (on by default; k3s has it off).
	SecretsEncryption bool

	// PodSecurityExempt are the namespaces --profile=cis does not hold to Pod Security's
	// restricted level.
	PodSecurityExempt []string

	// FlannelBackend is the cross-node overlay a server chooses for the whole cluster.
	FlannelBackend string

	// Agent is set for `kone agent`: a node that joins Server with Token and runs no control plane.
	Agent bool
	// Server is the cluster an agent joins, or, for a server, a server of the cluster it joins as
	// another server; empty, a server starts a cluster of its own.
	Server    string
	TokenFile string

	Node Node
}

// Backends of the cross-node pod network that --flannel-backend accepts; none leaves it to the user.
const (
	FlannelVXLAN  = "vxlan"
	FlannelHostGW = "host-gw"
	FlannelNone   = "none"
)

var flannelBackends = []string{FlannelVXLAN, FlannelHostGW, FlannelNone}

// Node is the node side's part of the configuration: what kubelet, kube-proxy and the pod
// network of this machine need. A server and an agent share it.
type Node struct {
	Name        string   // default: the host name, lower-cased
	IP          net.IP   // default: the address of the default route
	ExternalIPs []net.IP // addresses the node is reached at from outside, if not IP
	Labels      []string // key=value
	Taints      []string // key=value:Effect
	KubeletArgs []string
	ProxyArgs   []string
	// Disable names the parts kone would otherwise run that the user replaces with their own.
	Disable []string
	// Profile is a hardening profile: "" or ProfileCIS.
	Profile string
	// LBServerPort is the loopback port of the node side's load balancer to the apiservers.
	LBServerPort int
	// LocalStorage is where local-path volumes are made (empty: LocalStoragePath's default).
	LocalStorage string
}

// LoadBalancer is where the node side's load balancer to the apiservers listens.
func (n *Node) LoadBalancer() string { return fmt.Sprintf("127.0.0.1:%d", n.LBServerPort) }

// ProfileCIS hardens kone along the CIS Kubernetes Benchmark (k3s's --profile=cis).
const ProfileCIS = "cis"

// Disabled reports whether the user turned off a part of kone with --disable.
func (n *Node) Disabled(part string) bool { return slices.Contains(n.Disable, part) }

// Parts that --disable accepts.
const (
	DisableCoreDNS       = "coredns"
	DisableServiceLB     = "servicelb"
	DisableLocalStorage  = "local-storage"
	DisableMetrics       = "metrics-server"
	DisableNetworkPolicy = "network-policy"
)

var disableable = []string{DisableCoreDNS, DisableServiceLB, DisableLocalStorage, DisableMetrics, DisableNetworkPolicy}

// BindServerFlags registers every `kone server` setting on fs, with its default, bound into c.
func BindServerFlags(fs *pflag.FlagSet, c *Config) {
	_, clusterCIDR, _ := net.ParseCIDR("10.42.0.0/16")
	_, serviceCIDR, _ := net.ParseCIDR("10.43.0.0/16")
	c.ClusterCIDR, c.ServiceCIDR = clusterCIDR, serviceCIDR
	c.ClusterDNS = net.ParseIP("10.43.0.10")
	c.BindAddress = net.IPv4zero
	c.HTTPSPort, c.EtcdClientPort, c.EtcdPeerPort = 6443, 2379, 2380
	c.WriteKubeconfigMode = 0o600

	bindFileFlags(fs, c)
	fs.BoolVar(&c.Debug, "debug", false, "log at debug level, including the components' own output")
	fs.Var(ipValue{&c.BindAddress}, "bind-address", "address kube-apiserver listens on")
	fs.Var(ipValue{&c.AdvertiseAddress}, "advertise-address", "address kube-apiserver advertises to the cluster (default: the address of the default route)")
	fs.Var(portValue{&c.HTTPSPort}, "https-listen-port", "port kube-apiserver serves on")
	fs.StringSliceVar(&c.TLSSANs, "tls-san", nil, "extra host name or IP for the apiserver's serving certificate (repeatable)")
	fs.Var(cidrValue{&c.ClusterCIDR}, "cluster-cidr", "network pod IPs are allocated from")
	fs.Var(cidrValue{&c.ServiceCIDR}, "service-cidr", "network Service cluster IPs are allocated from")
	fs.Var(ipValue{&c.ClusterDNS}, "cluster-dns", "cluster IP of the DNS Service, inside --service-cidr")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", "cluster.local", "DNS domain of the cluster")
	fs.StringVarP(&c.Token, "token", "t", "", "server token, or the secret to build it from (default: generated on first start); with --server, the server token of the cluster to join")
	fs.StringVarP(&c.Server, "server", "s", "", "URL of a server of an existing cluster, such as https://10.0.0.1:6443, to join as another server (with the cluster's server token)")
	fs.StringVarP(&c.WriteKubeconfig, "write-kubeconfig", "o", DefaultKubeconfig, "where to write the admin kubeconfig")
	fs.Var(modeValue{&c.WriteKubeconfigMode}, "write-kubeconfig-mode", "file mode of the admin kubeconfig, in octal")
	fs.Var(portValue{&c.EtcdClientPort}, "etcd-client-port", "port embedded etcd serves clients on (loopback)")
	fs.Var(portValue{&c.EtcdPeerPort}, "etcd-peer-port", "port embedded etcd serves the other servers' members on (the node's address)")
	fs.Var(&argsValue{p: &c.APIServerArgs}, "kube-apiserver-arg", "extra kube-apiserver flag as key=value (repeatable)")
	fs.Var(&argsValue{p: &c.ControllerManagerArgs}, "kube-controller-manager-arg", "extra kube-controller-manager flag as key=value (repeatable)")
	fs.Var(&argsValue{p: &c.SchedulerArgs}, "kube-scheduler-arg", "extra kube-scheduler flag as key=value (repeatable)")
	fs.Var(&argsValue{p: &c.EtcdArgs}, "etcd-arg", "extra etcd setting as key=value, keys as in etcd's config file (repeatable)")
	fs.StringVar(&c.EtcdSnapshotDir, "etcd-snapshot-dir", "", "directory of etcd snapshots (default: <data-dir>/server/db/snapshots)")
	fs.StringVar(&c.EtcdSnapshotCron, "etcd-snapshot-schedule-cron", "0 */12 * * *", "when to snapshot etcd, as a cron expression (five fields, or six with seconds first)")
	fs.IntVar(&c.EtcdSnapshotRetention, "etcd-snapshot-retention", 5, "number of scheduled etcd snapshots to keep")
	fs.BoolVar(&c.EtcdDisableSnapshots, "etcd-disable-snapshots", false, "take no scheduled etcd snapshots")
	fs.BoolVar(&c.ClusterReset, "cluster-reset", false, "make this server's etcd a cluster of one member again, from its own data (after losing quorum) or from --cluster-reset-restore-path; the old data is moved aside")
	fs.StringVar(&c.ClusterResetRestorePath, "cluster-reset-restore-path", "", "with --cluster-reset: the etcd snapshot to restore, a file or the name of one in --etcd-snapshot-dir")
	fs.StringVar(&c.Manifests, "manifests-dir", "", "directory whose .yaml, .yml and .json files are applied to the cluster and kept applied (default: <data-dir>/server/manifests)")
	fs.BoolVar(&c.DisableAgent, "disable-agent", false, "run only the control plane, no node components")
	fs.BoolVar(&c.SecretsEncryption, "secrets-encryption", true, "encrypt Secrets in etcd (false: store new ones in plain text; encrypted ones stay readable)")
	fs.StringSliceVar(&c.PodSecurityExempt, "pod-security-exempt-namespace", []string{"kube-system"}, "namespace that --profile=cis leaves out of Pod Security's restricted level (repeatable)")
	fs.StringSliceVar(&c.Node.Disable, "disable", nil, "do not run this part of kone, to deploy your own instead: coredns, servicelb, local-storage, metrics-server, network-policy (repeatable)")
	fs.StringVar(&c.FlannelBackend, "flannel-backend", FlannelVXLAN, "how pod traffic crosses nodes: vxlan, host-gw (nodes share a layer-2 network) or none (bring your own)")
	bindNodeFlags(fs, &c.Node)
}

// bindFileFlags registers where kone's settings and state are.
func bindFileFlags(fs *pflag.FlagSet, c *Config) {
	fs.StringVarP(&c.ConfigFile, "config", "c", DefaultConfigFile, "config file; keys are flag names, lists for repeatable flags; drop-ins in <config>.d/*.yaml")
	fs.StringVarP(&c.DataDir, "data-dir", "d", DefaultDataDir, "directory that holds kone's state")
}

// BindAgentFlags registers every `kone agent` setting on fs, bound into c. The cluster's settings
// (CIDRs, DNS, the flannel backend) are not among them: an agent learns them from the server.
func BindAgentFlags(fs *pflag.FlagSet, c *Config) {
	c.Agent = true
	bindFileFlags(fs, c)
	fs.BoolVar(&c.Debug, "debug", false, "log at debug level, including the components' own output")
	fs.StringVarP(&c.Server, "server", "s", "", "URL of the server to join, such as https://10.0.0.1:6443 (also KONE_URL)")
	fs.StringVarP(&c.Token, "token", "t", "", "join token, as in the server's data dir (server/token) or from kone token create (also KONE_TOKEN)")
	fs.StringVar(&c.TokenFile, "token-file", "", "file that holds the join token (also KONE_TOKEN_FILE)")
	bindNodeFlags(fs, &c.Node)
}

// BindDataDirFlags registers the flags of `kone server` and of `kone agent` together, for
// commands that read the data dir of either (`kone certificate check`): given the flags or the
// config file of the kone on this machine, whatever its role, they find its data dir and use
// nothing else. LoadDataDir loads them.
func BindDataDirFlags(fs *pflag.FlagSet, c *Config) {
	BindServerFlags(fs, c)
	agent := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	BindAgentFlags(agent, &Config{})
	fs.AddFlagSet(agent) // adds the agent's own flags; those of the same name are the server's
}

// bindNodeFlags registers the node side's settings.
func bindNodeFlags(fs *pflag.FlagSet, n *Node) {
	n.LBServerPort = 6444
	fs.Var(portValue{&n.LBServerPort}, "lb-server-port", "loopback port of the node's load balancer to the apiservers")
	fs.StringVar(&n.Name, "node-name", "", "name the node registers under (default: the host name)")
	fs.Var(ipValue{&n.IP}, "node-ip", "IP address the node advertises (default: the address of the default route)")
	fs.IPSliceVar(&n.ExternalIPs, "node-external-ip", nil, "IP address the node is reached at from outside, published as its ExternalIP (repeatable)")
	fs.StringSliceVar(&n.Labels, "node-label", nil, "label to register the node with, key=value (repeatable)")
	fs.StringSliceVar(&n.Taints, "node-taint", nil, "taint to register the node with, key=value:Effect (repeatable)")
	fs.Var(&argsValue{p: &n.KubeletArgs}, "kubelet-arg", "extra kubelet flag as key=value (repeatable)")
	fs.Var(&argsValue{p: &n.ProxyArgs}, "kube-proxy-arg", "extra kube-proxy flag as key=value (repeatable)")
	fs.StringVar(&n.LocalStorage, "default-local-storage-path", "", "directory that local-path volumes are made in (default: <data-dir>/storage)")
	fs.StringVar(&n.Profile, "profile", "", "hardening profile: cis (Pod Security restricted, audit log, event rate limit, kubelet protects kernel defaults)")
}

// Load applies the config file, its drop-ins and the environment to the flags in fs that were
// not given on the command line, then checks the result as a whole. lookupEnv is os.LookupEnv
// outside tests.
func Load(fs *pflag.FlagSet, c *Config, lookupEnv func(string) (string, bool)) error {
	if err := applyLayers(fs, c, lookupEnv); err != nil {
		return err
	}
	return c.Validate()
}

// LoadDataDir is Load for a flag set of BindDataDirFlags: it checks only the data dir, since
// the rest may be a server's or an agent's; a command that needs the rest learns the role from
// the data dir and calls Validate.
func LoadDataDir(fs *pflag.FlagSet, c *Config, lookupEnv func(string) (string, bool)) error {
	if err := applyLayers(fs, c, lookupEnv); err != nil {
		return err
	}
	return c.checkDataDir()
}

// applyLayers applies the config file, its drop-ins and the environment to the flags in fs that were
// not given on the command line.
func applyLayers(fs *pflag.FlagSet, c *Config, lookupEnv func(string) (string, bool)) error {
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { onCommandLine[f.Name] = true })

	explicit := onCommandLine["config"]
	if v, ok := lookupEnv(envName("config")); ok && !explicit {
		c.ConfigFile, explicit = v, true
	}
	files, err := configFiles(c.ConfigFile, explicit)
	if err != nil {
		return err
	}
	for _, file := range files {
		if err := applyFile(fs, file, onCommandLine); err != nil {
			return err
		}
	}
	return applyEnv(fs, lookupEnv, onCommandLine)
}

// configFiles lists the main file (when it exists or was asked for) and then its drop-ins in name order.
func configFiles(main string, explicit bool) ([]string, error) {
	var files []string
	switch _, err := os.Stat(main); {
	case err == nil:
		files = append(files, main)
	case errors.Is(err, os.ErrNotExist) && !explicit:
	default:
		return nil, fmt.Errorf("config file %s: %w; create it or point --config at an existing file", main, err)
	}
	dropins, err := filepath.Glob(filepath.Join(main+".d", "*.yaml"))
	if err != nil {
		return nil, fmt.Errorf("config drop-ins %s.d: %w", main, err)
	}
	sort.Strings(dropins)
	return append(files, dropins...), nil
}

func applyFile(fs *pflag.FlagSet, file string, onCommandLine map[string]bool) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("config file %s: %w", file, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config file %s: not valid YAML: %w", file, err)
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config file %s: expected a mapping of flag names to values, such as \"cluster-cidr: 10.42.0.0/16\"", file)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, val := root.Content[i], root.Content[i+1]
		where := fmt.Sprintf("config file %s: line %d: key %q", file, key.Line, key.Value)
		f := fs.Lookup(key.Value)
		if f == nil || key.Value == "config" {
			return fmt.Errorf("%s: unknown key; keys are the flag names of this command (`kone server --help` or `kone agent --help`) without the leading --", where)
		}
		values, err := scalars(val, isList(f))
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if onCommandLine[f.Name] {
			continue
		}
		if err := setFlag(f, values); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	return nil
}

// scalars returns the raw text of a scalar or of each item of a list, so that a value such as
// 0644 reaches the flag as written rather than as YAML's idea of a number.
func scalars(n *yaml.Node, list bool) ([]string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil, errors.New("has no value")
		}
		return []string{n.Value}, nil
	case yaml.SequenceNode:
		if !list {
			return nil, errors.New("expected a single value, got a list")
		}
		out := make([]string, 0, len(n.Content))
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: expected a list of plain values", item.Line)
			}
			out = append(out, item.Value)
		}
		return out, nil
	default:
		if list {
			return nil, errors.New("expected a value or a list of values")
		}
		return nil, errors.New("expected a single value")
	}
}

func applyEnv(fs *pflag.FlagSet, lookupEnv func(string) (string, bool), onCommandLine map[string]bool) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		name := envName(f.Name)
		v, ok := lookupEnv(name)
		if !ok || err != nil || onCommandLine[f.Name] || f.Name == "config" {
			return
		}
		values := []string{v}
		if isList(f) {
			values = strings.Split(v, ",")
		}
		if e := setFlag(f, values); e != nil {
			err = fmt.Errorf("environment variable %s: %w", name, e)
		}
	})
	return err
}

func envName(flag string) string {
	if flag == "server" {
		return envPrefix + "URL" // the name k3s users know from its installer
	}
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

func isList(f *pflag.Flag) bool {
	_, ok := f.Value.(pflag.SliceValue)
	return ok
}

// setFlag replaces a flag's value; a list replaces the whole list of an earlier layer.
func setFlag(f *pflag.Flag, values []string) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.Replace(values)
	}
	if err := f.Value.Set(values[0]); err != nil {
		if f.Value.Type() == "bool" {
			return fmt.Errorf("%q is not a boolean; expected true or false", values[0])
		}
		return err
	}
	return nil
}

var dnsName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// Validate checks what no single flag can: relations between settings. Load calls it; after
// LoadDataDir, a command that has learned the role from the data dir calls it.
func (c *Config) Validate() error {
	if c.Agent {
		return c.validateAgent()
	}
	if err := c.checkDataDir(); err != nil {
		return err
	}
	if c.BindAddress == nil {
		return errors.New("--bind-address is empty; expected an IP address such as 0.0.0.0")
	}
	if c.ClusterDNS == nil || !c.ServiceCIDR.Contains(c.ClusterDNS) {
		return fmt.Errorf("--cluster-dns %v is not inside --service-cidr %v; pick an address in that network", c.ClusterDNS, c.ServiceCIDR)
	}
	if c.ClusterCIDR.Contains(c.ServiceCIDR.IP) || c.ServiceCIDR.Contains(c.ClusterCIDR.IP) {
		return fmt.Errorf("--cluster-cidr %v and --service-cidr %v overlap; give them separate networks", c.ClusterCIDR, c.ServiceCIDR)
	}
	if ones, bits := c.ClusterCIDR.Mask.Size(); bits-ones < 9 {
		return fmt.Errorf("--cluster-cidr %v is too small: every node gets a /24 of it, so use a /23 or larger", c.ClusterCIDR)
	}
	if !dnsName.MatchString(c.ClusterDomain) {
		return fmt.Errorf("--cluster-domain %q is not a DNS name; expected something such as cluster.local", c.ClusterDomain)
	}
	for _, san := range c.TLSSANs {
		if strings.TrimSpace(san) == "" || strings.ContainsAny(san, " /:") && net.ParseIP(san) == nil {
			return fmt.Errorf("--tls-san %q is neither a host name nor an IP address", san)
		}
	}
	if c.EtcdClientPort == c.EtcdPeerPort || c.EtcdClientPort == c.HTTPSPort || c.EtcdPeerPort == c.HTTPSPort {
		return fmt.Errorf("--https-listen-port %d, --etcd-client-port %d and --etcd-peer-port %d must all differ", c.HTTPSPort, c.EtcdClientPort, c.EtcdPeerPort)
	}
	if c.Token != "" {
		if _, err := token.Parse(c.Token); err != nil {
			return fmt.Errorf("--token: %w", err)
		}
	}
	if c.Server != "" {
		if err := checkServerURL(c.Server); err != nil {
			return err
		}
		if c.Token == "" {
			return errors.New("--server without --token: a server joins with the cluster's server token, in server/token of the data dir of one of its servers")
		}
	}
	if _, err := snapshot.ParseSchedule(c.EtcdSnapshotCron); err != nil {
		return err
	}
	if c.EtcdSnapshotRetention < 1 {
		return fmt.Errorf("--etcd-snapshot-retention %d: keep at least one snapshot (--etcd-disable-snapshots takes none)", c.EtcdSnapshotRetention)
	}
	if c.ClusterResetRestorePath != "" && !c.ClusterReset {
		return fmt.Errorf("--cluster-reset-restore-path %s without --cluster-reset: add --cluster-reset to restore the snapshot", c.ClusterResetRestorePath)
	}
	if c.Manifests != "" && !filepath.IsAbs(c.Manifests) {
		return fmt.Errorf("--manifests-dir %q: expected an absolute path", c.Manifests)
	}
	if c.EtcdSnapshotDir != "" && !filepath.IsAbs(c.EtcdSnapshotDir) {
		return fmt.Errorf("--etcd-snapshot-dir %q: expected an absolute path", c.EtcdSnapshotDir)
	}
	if !slices.Contains(flannelBackends, c.FlannelBackend) {
		return fmt.Errorf("--flannel-backend %q: expected one of %s", c.FlannelBackend, strings.Join(flannelBackends, ", "))
	}
	if c.WriteKubeconfig != "" && !filepath.IsAbs(c.WriteKubeconfig) {
		return fmt.Errorf("--write-kubeconfig %q: expected an absolute path such as %s", c.WriteKubeconfig, DefaultKubeconfig)
	}
	for _, ns := range c.PodSecurityExempt {
		if !dnsLabel.MatchString(ns) {
			return fmt.Errorf("--pod-security-exempt-namespace %q is not a namespace name", ns)
		}
	}
	if c.Node.Profile == ProfileCIS {
		if _, given := args.Override(c.APIServerArgs, "admission-control-config-file"); given {
			return errors.New("--kube-apiserver-arg admission-control-config-file: --profile=cis writes the admission configuration itself (Pod Security, event rate limit); " +
				"choose the namespaces it leaves out with --pod-security-exempt-namespace, or drop --profile=cis to use your own file")
		}
	}
	return c.Node.validate()
}

// dnsLabel is a namespace name.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func (c *Config) checkDataDir() error {
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("--data-dir %q: expected an absolute path such as %s", c.DataDir, DefaultDataDir)
	}
	return nil
}

func (c *Config) validateAgent() error {
	if err := c.checkDataDir(); err != nil {
		return err
	}
	if c.Server == "" {
		return errors.New("no server to join: give --server https://HOST:6443 (or KONE_URL, or server: in the config file)")
	}
	if err := checkServerURL(c.Server); err != nil {
		return err
	}
	if c.Token != "" && c.TokenFile != "" {
		return errors.New("both --token and --token-file are set; give only one")
	}
	if c.TokenFile != "" {
		data, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		c.Token = strings.TrimSpace(string(data))
		if c.Token == "" {
			return fmt.Errorf("--token-file %s is empty; copy the token from the server's data dir (server/token)", c.TokenFile)
		}
	}
	if c.Token == "" {
		return errors.New("no join token: give --token (or KONE_TOKEN, or --token-file) with the token from the server's data dir (server/token) or from `kone token create`")
	}
	if _, err := token.Parse(c.Token); err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	return c.Node.validate()
}

func checkServerURL(server string) error {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("--server %q: expected the server's URL, such as https://10.0.0.1:6443", server)
	}
	return nil
}

var labelKey = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)

func (n *Node) validate() error {
	if n.Profile != "" && n.Profile != ProfileCIS {
		return fmt.Errorf("--profile %q: kone knows only %s", n.Profile, ProfileCIS)
	}
	if n.Name != "" && !dnsName.MatchString(n.Name) {
		return fmt.Errorf("--node-name %q is not a valid node name; use lower-case letters, digits, '-' and '.'", n.Name)
	}
	for _, l := range n.Labels {
		k, _, ok := strings.Cut(l, "=")
		if !ok || !labelKey.MatchString(k) {
			return fmt.Errorf("--node-label %q: expected key=value, such as topology.kubernetes.io/zone=rack3", l)
		}
	}
	for _, t := range n.Taints {
		kv, effect, ok := strings.Cut(t, ":")
		k, _, _ := strings.Cut(kv, "=")
		if !ok || !labelKey.MatchString(k) || (effect != "NoSchedule" && effect != "PreferNoSchedule" && effect != "NoExecute") {
			return fmt.Errorf("--node-taint %q: expected key=value:Effect with Effect NoSchedule, PreferNoSchedule or NoExecute", t)
		}
	}
	if n.LocalStorage != "" && (!filepath.IsAbs(n.LocalStorage) || filepath.Clean(n.LocalStorage) == "/") {
		return fmt.Errorf("--default-local-storage-path %q: expected an absolute path other than /, such as /var/lib/kone/storage", n.LocalStorage)
	}
	for _, d := range n.Disable {
		if !slices.Contains(disableable, d) {
			return fmt.Errorf("--disable %q: kone can leave out only %s", d, strings.Join(disableable, ", "))
		}
	}
	return nil
}

// ServerDir holds everything only a server has: certificates, etcd's data, the token.
func (c *Config) ServerDir() string { return filepath.Join(c.DataDir, "server") }

// ServerToken are the files of the server's own join token.
func (c *Config) ServerToken() token.ServerFiles {
	return token.ServerFiles{Token: filepath.Join(c.ServerDir(), "token"), Published: filepath.Join(c.ServerDir(), "token.published"),
		Superseded: filepath.Join(c.ServerDir(), "token.superseded")}
}

// EncryptionConfig is the apiserver's encryption configuration, keys included; EncryptionDone
// records the writer every stored Secret was last brought to.
func (c *Config) EncryptionConfig() string {
	return filepath.Join(c.ServerDir(), "cred", "encryption-config.yaml")
}
func (c *Config) EncryptionDone() string {
	return filepath.Join(c.ServerDir(), "cred", "encryption-done")
}

// SnapshotDir is where etcd snapshots are saved.
func (c *Config) SnapshotDir() string {
	if c.EtcdSnapshotDir != "" {
		return c.EtcdSnapshotDir
	}
	return filepath.Join(c.ServerDir(), "db", "snapshots")
}

// ManifestsDir is the auto-deploy directory: what is in it is applied to the cluster.
func (c *Config) ManifestsDir() string {
	if c.Manifests != "" {
		return c.Manifests
	}
	return filepath.Join(c.ServerDir(), "manifests")
}

// LocalStoragePath is where the node makes the directories of local-path volumes.
func (c *Config) LocalStoragePath() string {
	if c.Node.LocalStorage != "" {
		return filepath.Clean(c.Node.LocalStorage)
	}
	return filepath.Join(c.DataDir, "storage")
}

// EtcdURL is where the server's etcd serves its clients.
func (c *Config) EtcdURL() string { return fmt.Sprintf("https://127.0.0.1:%d", c.EtcdClientPort) }

// TLSDir holds the cluster's PKI.
func (c *Config) TLSDir() string { return filepath.Join(c.ServerDir(), "tls") }

// AgentDir holds the node side's state: containerd's images, kubelet's and kube-proxy's
// credentials and configuration, the CNI configuration.
func (c *Config) AgentDir() string { return filepath.Join(c.DataDir, "agent") }

// ImagesDir is where image archives are imported from.
func (c *Config) ImagesDir() string { return filepath.Join(c.AgentDir(), "images") }
