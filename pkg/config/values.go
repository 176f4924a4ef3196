package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ipv6 is the error for an IPv6 value: the node side (bridge, flannel, kube-proxy's rules,
// kone's own) is IPv4 only, and would fail only later, at run time.
const ipv6 = "IPv6 is not supported yet: kone's node side is IPv4 only; give an IPv4 "

// cidrValue is a pflag.Value for one IPv4 network such as 10.42.0.0/16.
type cidrValue struct{ p **net.IPNet }

func (v cidrValue) String() string {
	if *v.p == nil {
		return ""
	}
	return (*v.p).String()
}

func (v cidrValue) Set(s string) error {
	ip, n, err := net.ParseCIDR(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a CIDR; expected a network such as 10.42.0.0/16", s)
	}
	if ip.To4() == nil {
		return fmt.Errorf("%q: %snetwork such as 10.42.0.0/16", s, ipv6)
	}
	if !ip.Equal(n.IP) {
		return fmt.Errorf("%q has host bits set; expected the network address %s", s, n)
	}
	*v.p = n
	return nil
}

func (cidrValue) Type() string { return "cidr" }

// ipValue is a pflag.Value for one IP address; empty means "not set".
type ipValue struct{ p *net.IP }

func (v ipValue) String() string {
	if *v.p == nil {
		return ""
	}
	return v.p.String()
}

func (v ipValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		*v.p = nil
		return nil
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return fmt.Errorf("%q is not an IP address; expected an address such as 192.168.1.10", s)
	}
	if ip.To4() == nil {
		return fmt.Errorf("%q: %saddress such as 192.168.1.10", s, ipv6)
	}
	*v.p = ip
	return nil
}

func (ipValue) Type() string { return "ip" }

// portValue is a pflag.Value for a TCP port, 1-65535.
type portValue struct{ p *int }

func (v portValue) String() string { return strconv.Itoa(*v.p) }

func (v portValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q is not a port; expected a number from 1 to 65535", s)
	}
	*v.p = n
	return nil
}

func (portValue) Type() string { return "port" }

// modeValue is a pflag.Value for an octal file mode such as 0600.
type modeValue struct{ p *uint32 }

func (v modeValue) String() string { return fmt.Sprintf("%#o", *v.p) }

func (v modeValue) Set(s string) error {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 8, 32)
	if err != nil || n > 0o777 {
		return fmt.Errorf("%q is not a file mode; expected octal permissions such as 0600 or 0644", s)
	}
	*v.p = uint32(n)
	return nil
}

func (modeValue) Type() string { return "mode" }

// argsValue is a repeatable pflag.Value of key=value arguments passed through to a component,
// written --kube-apiserver-arg=audit-log-maxage=30. A leading "--" on the key is tolerated.
type argsValue struct {
	p       *[]string
	changed bool
}

func (v *argsValue) String() string {
	if len(*v.p) == 0 {
		return ""
	}
	return "[" + strings.Join(*v.p, ",") + "]"
}

func (v *argsValue) Set(s string) error {
	if err := checkArg(s); err != nil {
		return err
	}
	if !v.changed {
		*v.p = nil
		v.changed = true
	}
	*v.p = append(*v.p, s)
	return nil
}

func (*argsValue) Type() string { return "key=value" }

// Replace lets a later configuration layer replace the whole list (pflag.SliceValue).
func (v *argsValue) Replace(vals []string) error {
	for _, s := range vals {
		if err := checkArg(s); err != nil {
			return err
		}
	}
	*v.p = append([]string(nil), vals...)
	v.changed = true
	return nil
}

func (v *argsValue) Append(s string) error { return v.Set(s) }

func (v *argsValue) GetSlice() []string { return append([]string(nil), *v.p...) }

func checkArg(s string) error {
	k, _, ok := strings.Cut(s, "=")
	k = strings.TrimLeft(k, "-")
	if !ok || k == "" {
		return fmt.Errorf("%q is not a component argument; expected key=value, such as v=2", s)
	}
	return nil
}
