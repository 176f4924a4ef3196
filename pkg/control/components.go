package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"k8s.io/client-go/rest"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/configz"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	cmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	cmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	schedoptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	"sigs.k8s.io/yaml"

	"github.com/kone-dev/kone/pkg/args"
	"github.com/kone-dev/kone/pkg/pki"
	"github.com/kone-dev/kone/pkg/probe"
)

// parse parses flags with a component's own flag sets, as its command would.
func parse(name string, sets cliflag.NamedFlagSets, flags []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	for _, s := range sets.FlagSets {
		fs.AddFlagSet(s)
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(flags); err != nil {
		return fmt.Errorf("%s arguments: %w (check --%s-arg)", name, err, name)
	}
	return nil
}

// APIServer is kube-apiserver.
type APIServer struct {
	opts     *apiserveroptions.ServerRunOptions
	authFile string
	auth     []byte
	health   *rest.Config
}

// NewAPIServer parses flags, and refuses those that would weaken what kone's security rests
// on; userAuth is the user's authentication configuration file (UserAuthenticationConfig),
// health an admin client for the readiness check.
func NewAPIServer(flags []string, userAuth string, health *rest.Config) (*APIServer, error) {
	s := apiserveroptions.NewServerRunOptions()
	if err := parse("kube-apiserver", s.Flags(), flags); err != nil {
		return nil, err
	}
	if slices.Contains(s.Admission.GenericAdmission.DisablePlugins, nodeRestriction) {
		return nil, fmt.Errorf("--kube-apiserver-arg disable-admission-plugins: kone does not run without %s, which holds each kubelet to its own node", nodeRestriction)
	}
	if slices.Contains(s.Authorization.Modes, "AlwaysAllow") {
		return nil, errors.New("--kube-apiserver-arg authorization-mode: AlwaysAllow would let every user do anything; kone keeps Node and RBAC, to which you may add Webhook")
	}
	auth, err := authenticationConfig(userAuth)
	if err != nil {
		return nil, err
	}
	return &APIServer{opts: s, authFile: args.Value(flags, "authentication-config"), auth: auth, health: health}, nil
}

func (a *APIServer) Name() string { return "kube-apiserver" }

func (a *APIServer) Run(ctx context.Context) error {
	if err := pki.WriteFile(a.authFile, a.auth, 0o600); err != nil {
		return err
	}
	if err := a.opts.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	completed, err := a.opts.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return utilerrors.NewAggregate(errs)
	}
	return apiserverapp.Run(ctx, completed)
}

// Ready waits for /readyz, as a user's client would see it.
func (a *APIServer) Ready(ctx context.Context) error {
	client, err := rest.HTTPClientFor(a.health)
	if err != nil {
		return err
	}
	return probe.HTTP(ctx, client, a.health.Host+"/readyz")
}

// anonymousPaths are all an unauthenticated client may reach: health, and the cluster-info
// a joining node reads before it has credentials. RBAC still decides what anonymous may read.
var anonymousPaths = []string{"/livez", "/readyz", "/healthz", "/version", "/api/v1/namespaces/kube-public/configmaps/cluster-info"}

// authenticationConfig is kone's AuthenticationConfiguration, with the JWT authenticators of
// the user's own file (--kube-apiserver-arg authentication-config=FILE, "" for none) merged in.
// kone never writes the user's file; it writes the merge to a file of its own, so a change to
// the user's file takes effect at kone's next start.
func authenticationConfig(userFile string) ([]byte, error) {
	cfg := apiserverv1.AuthenticationConfiguration{
		TypeMeta: metav1.TypeMeta{APIVersion: apiserverv1.SchemeGroupVersion.String(), Kind: "AuthenticationConfiguration"},
	}
	if userFile != "" {
		data, err := os.ReadFile(userFile)
		if err != nil {
			return nil, fmt.Errorf("--kube-apiserver-arg authentication-config: %w", err)
		}
		var user apiserverv1.AuthenticationConfiguration
		if err := yaml.UnmarshalStrict(data, &user); err != nil {
			return nil, fmt.Errorf("--kube-apiserver-arg authentication-config: %s: %w", userFile, err)
		}
		if user.TypeMeta != cfg.TypeMeta {
			return nil, fmt.Errorf("--kube-apiserver-arg authentication-config: %s is %s %s; kone merges an AuthenticationConfiguration of %s",
				userFile, user.APIVersion, user.Kind, cfg.APIVersion)
		}
		if user.Anonymous != nil {
			return nil, fmt.Errorf("--kube-apiserver-arg authentication-config: %s sets anonymous, which kone sets itself "+
				"(anonymous requests reach only %s); remove it from the file", userFile, strings.Join(anonymousPaths, ", "))
		}
		cfg.JWT = user.JWT
	}
	cfg.Anonymous = &apiserverv1.AnonymousAuthConfig{Enabled: true}
	for _, p := range anonymousPaths {
		cfg.Anonymous.Conditions = append(cfg.Anonymous.Conditions, apiserverv1.AnonymousAuthCondition{Path: p})
	}
	return yaml.Marshal(cfg)
}

// ControllerManager is kube-controller-manager.
type ControllerManager struct {
	flags []string
	port  string
}

// NewControllerManager checks flags; Run parses them afresh each time it runs, since upstream's
// options keep what one run opened (its listener) and a server that regains the lease runs it
// again.
func NewControllerManager(flags []string) (*ControllerManager, error) {
	if _, err := controllerManagerOptions(flags); err != nil {
		return nil, err
	}
	return &ControllerManager{flags: flags, port: args.Value(flags, "secure-port")}, nil
}

func controllerManagerOptions(flags []string) (*cmoptions.KubeControllerManagerOptions, error) {
	s, err := cmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return nil, err
	}
	sets := s.Flags(cmapp.KnownControllers(), cmapp.ControllersDisabledByDefault(), cmapp.ControllerAliases())
	s.ParsedFlags = &sets
	return s, parse("kube-controller-manager", sets, flags)
}

func (c *ControllerManager) Name() string { return "kube-controller-manager" }

func (c *ControllerManager) Run(ctx context.Context) error {
	opts, err := controllerManagerOptions(c.flags)
	if err != nil {
		return err
	}
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	cfg, err := opts.Config(ctx, cmapp.KnownControllers(), cmapp.ControllersDisabledByDefault(), cmapp.ControllerAliases())
	if err != nil {
		return err
	}
	// Run registers its configuration process-wide, once.
	defer configz.Delete(cmapp.ConfigzName)
	return cmapp.Run(ctx, cfg.Complete())
}

func (c *ControllerManager) Ready(ctx context.Context) error {
	return probe.HTTP(ctx, localHealthClient(), "https://"+net.JoinHostPort("127.0.0.1", c.port)+"/healthz")
}

// Scheduler is kube-scheduler.
type Scheduler struct {
	flags []string
	port  string
}

// NewScheduler checks flags; Run parses them afresh, as for the controller-manager.
func NewScheduler(flags []string) (*Scheduler, error) {
	if _, err := schedulerOptions(flags); err != nil {
		return nil, err
	}
	return &Scheduler{flags: flags, port: args.Value(flags, "secure-port")}, nil
}

func schedulerOptions(flags []string) (*schedoptions.Options, error) {
	opts := schedoptions.NewOptions()
	return opts, parse("kube-scheduler", *opts.Flags, flags)
}

func (s *Scheduler) Name() string { return "kube-scheduler" }

func (s *Scheduler) Run(ctx context.Context) error {
	opts, err := schedulerOptions(s.flags)
	if err != nil {
		return err
	}
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	cc, sched, err := schedapp.Setup(ctx, opts)
	if err != nil {
		return err
	}
	// As for the controller-manager; the name is upstream's, which it does not export.
	defer configz.Delete("componentconfig")
	err = schedapp.Run(ctx, cc, sched)
	if ctx.Err() != nil {
		return nil // a requested stop, which upstream reports as an error
	}
	return err
}

func (s *Scheduler) Ready(ctx context.Context) error {
	return probe.HTTP(ctx, localHealthClient(), "https://"+net.JoinHostPort("127.0.0.1", s.port)+"/readyz")
}

// localHealthClient probes a component of this process on loopback. The controller-manager and
// the scheduler serve with certificates they generate in memory, so there is nothing to verify
// them against; the probe sends no credentials and reads only a status code.
func localHealthClient() *http.Client {
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // see above
	}
}
