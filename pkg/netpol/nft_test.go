package netpol

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go4.org/netipx"
	"golang.org/x/sys/unix"
)

// onThread runs f on a locked thread that returns to this network namespace after it, however
// f moved it.
func onThread(t *testing.T, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // this thread is in the wrong namespace; nothing else may run on it
		}
	}()
	f()
}

// inNetns runs f in ns: sockets f opens belong to ns.
func inNetns(t *testing.T, ns netns.NsHandle, f func()) {
	t.Helper()
	onThread(t, func() {
		if err := netns.Set(ns); err != nil {
			t.Fatal(err)
		}
		f()
	})
}

func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	var ns netns.NsHandle
	onThread(t, func() {
		var err error
		if ns, err = netns.New(); err != nil {
			t.Fatalf("new network namespace (the test needs root): %v", err)
		}
	})
	t.Cleanup(func() { ns.Close() })
	return ns
}

// routed makes a router namespace that forwards between a client (10.99.1.2) and a server
// (10.99.2.2) namespace, all the test's own, and returns them.
func routed(t *testing.T) (router, client, server netns.NsHandle) {
	router, client, server = newNetns(t), newNetns(t), newNetns(t)
	rh, err := netlink.NewHandleAt(router)
	if err != nil {
		t.Fatal(err)
	}
	defer rh.Close()
	for i, end := range []netns.NsHandle{client, server} {
		name := []string{"client", "server"}[i]
		subnet := []string{"10.99.1", "10.99.2"}[i]
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(end))}
		if err := rh.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
		up(t, rh, name, subnet+".1/24")
		eh, err := netlink.NewHandleAt(end)
		if err != nil {
			t.Fatal(err)
		}
		up(t, eh, "eth0", subnet+".2/24")
		up(t, eh, "lo", "")
		if err := eh.RouteAdd(&netlink.Route{Gw: net.ParseIP(subnet + ".1")}); err != nil {
			t.Fatal(err)
		}
		eh.Close()
	}
	inNetns(t, router, func() {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	return router, client, server
}

func up(t *testing.T, h *netlink.Handle, name, addr string) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
}

// echo serves lines back on 10.99.2.2:8080 in ns.
func echo(t *testing.T, ns netns.NsHandle) {
	var l net.Listener
	inNetns(t, ns, func() {
		var err error
		if l, err = net.Listen("tcp", "10.99.2.2:8080"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := c.Write(append(sc.Bytes(), '\n')); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// dial connects from ns to the server, or fails within a second.
func dial(t *testing.T, ns netns.NsHandle) (net.Conn, error) {
	var c net.Conn
	var err error
	inNetns(t, ns, func() { c, err = net.DialTimeout("tcp", "10.99.2.2:8080", time.Second) })
	return c, err
}

// roundTrip says whether a line sent on c comes back within a second.
func roundTrip(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "ping\n"
}

func program(t *testing.T, router netns.NsHandle, rs Ruleset) {
	t.Helper()
	if err := Program(rs, int(router)); err != nil {
		t.Fatalf("program %+v: %v", rs, err)
	}
}

// The table does to real packets, forwarded by a real kernel, what the rules say.
func TestProgramFiltersForwardedTraffic(t *testing.T) {
	router, client, server := routed(t)
	echo(t, server)
	serverAddr, clientAddr := addrs4("10.99.2.2"), addrs4("10.99.1.2")
	r := func(from, to string) []netipx.IPRange {
		return []netipx.IPRange{netipx.IPRangeFrom(netip.MustParseAddr(from), netip.MustParseAddr(to))}
	}
	tcpPorts := func(first, last uint16, to string) []Port {
		p := Port{Protocol: unix.IPPROTO_TCP, First: first, Last: last}
		if to != "" {
			p.To = netip.MustParseAddr(to)
		}
		return []Port{p}
	}

	// An empty table already tracks connections (a namespace's conntrack starts with its first
	// user, as it has on a node, with kube-proxy's): the one made now is known as established.
	program(t, router, Ruleset{})
	established, err := dial(t, client)
	if err != nil {
		t.Fatalf("no table yet, and the client cannot reach the server: %v", err)
	}
	defer established.Close()

	for _, tc := range []struct {
		name  string
		rs    Ruleset
		allow bool
	}{
		{"ingress isolated, nothing allowed", Ruleset{Ingress: []Policy{{Name: "t/deny", Targets: serverAddr}}}, false},
		{"ingress from another range only", Ruleset{Ingress: []Policy{{Name: "t/other", Targets: serverAddr, Rules: []Rule{{Peers: r("10.99.3.0", "10.99.3.255"), AnyPort: true}}}}}, false},
		{"ingress from the client's range, its port in the range", Ruleset{Ingress: []Policy{{Name: "t/range", Targets: serverAddr, Rules: []Rule{{Peers: r("10.99.1.0", "10.99.1.127"), Ports: tcpPorts(8000, 8090, "")}}}}}, true},
		{"ingress on another port", Ruleset{Ingress: []Policy{{Name: "t/port", Targets: serverAddr, Rules: []Rule{{AnyPeer: true, Ports: tcpPorts(80, 80, "")}}}}}, false},
		{"ingress on UDP only", Ruleset{Ingress: []Policy{{Name: "t/udp", Targets: serverAddr, Rules: []Rule{{AnyPeer: true, Ports: []Port{{Protocol: unix.IPPROTO_UDP, Last: 65535}}}}}}}, false},
		{"a named port on the server", Ruleset{Ingress: []Policy{{Name: "t/named", Targets: serverAddr, Rules: []Rule{{AnyPeer: true, Ports: tcpPorts(8080, 8080, "10.99.2.2")}}}}}, true},
		{"a named port on another pod", Ruleset{Ingress: []Policy{{Name: "t/named", Targets: serverAddr, Rules: []Rule{{AnyPeer: true, Ports: tcpPorts(8080, 8080, "10.99.2.3")}}}}}, false},
		{"a second policy allows what the first does not", Ruleset{Ingress: []Policy{
			{Name: "t/deny", Targets: serverAddr},
			{Name: "t/allow", Targets: serverAddr, Rules: []Rule{{Peers: r("10.99.1.2", "10.99.1.2"), AnyPort: true}}},
		}}, true},
		{"egress isolated, nothing allowed", Ruleset{Egress: []Policy{{Name: "t/deny", Targets: clientAddr}}}, false},
		{"egress to a range up to the last address", Ruleset{Egress: []Policy{{Name: "t/open", Targets: clientAddr, Rules: []Rule{{Peers: r("10.0.0.0", "255.255.255.255"), AnyPort: true}}}}}, true},
		{"egress allowed, ingress not", Ruleset{
			Egress:  []Policy{{Name: "t/out", Targets: clientAddr, Rules: []Rule{{AnyPeer: true, AnyPort: true}}}},
			Ingress: []Policy{{Name: "t/in", Targets: serverAddr}},
		}, false},
		{"policies on other pods only", Ruleset{Ingress: []Policy{{Name: "t/else", Targets: addrs4("10.99.2.3")}}}, true},
		{"ingress from a range that ends just below the client", Ruleset{Ingress: []Policy{{Name: "t/below", Targets: serverAddr, Rules: []Rule{{Peers: r("10.99.1.0", "10.99.1.1"), AnyPort: true}}}}}, false},
		{"egress to the server's port range", Ruleset{Egress: []Policy{{Name: "t/ports", Targets: clientAddr, Rules: []Rule{{AnyPeer: true, Ports: tcpPorts(8000, 8090, "")}}}}}, true},
		{"egress on another port", Ruleset{Egress: []Policy{{Name: "t/ports", Targets: clientAddr, Rules: []Rule{{AnyPeer: true, Ports: tcpPorts(9000, 9000, "")}}}}}, false},
		{"egress to a named port on the server", Ruleset{Egress: []Policy{{Name: "t/named", Targets: clientAddr, Rules: []Rule{{Peers: r("10.99.2.0", "10.99.2.255"), Ports: tcpPorts(8080, 8080, "10.99.2.2")}}}}}, true},
		// The API allows a namespace/name of 317 bytes; a rule comment holds 256.
		{"a policy with the longest name", Ruleset{Ingress: []Policy{{Name: strings.Repeat("n", 63) + "/" + strings.Repeat("p", 253), Targets: serverAddr, Rules: []Rule{{AnyPeer: true, AnyPort: true}}}}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			program(t, router, tc.rs)
			c, err := dial(t, client)
			if err == nil {
				defer c.Close()
			}
			if allowed := err == nil && roundTrip(c); allowed != tc.allow {
				t.Errorf("connection allowed: %v, want %v (dial: %v)", allowed, tc.allow, err)
			}
			// A policy acts on new connections: replies on one made before still pass.
			if !roundTrip(established) {
				t.Error("a connection made before the policy no longer works")
			}
		})
	}

	// The check at start writes a table like kone's, and leaves none behind.
	if err := Available(int(router)); err != nil {
		t.Fatalf("available: %v", err)
	}
	conn, err := connect(int(router))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range tables {
		if table.Name != TableName {
			t.Errorf("the check left table %s", table.Name)
		}
	}

	program(t, router, Ruleset{Ingress: []Policy{{Name: "t/deny", Targets: serverAddr}}})
	for i := 0; i < 2; i++ {
		if err := Remove(int(router)); err != nil {
			t.Fatalf("remove %d: %v", i+1, err)
		}
	}
	c, err := dial(t, client)
	if err != nil || !roundTrip(c) {
		t.Fatalf("the table is removed, and the client cannot reach the server: %v", err)
	}
	c.Close()
}
