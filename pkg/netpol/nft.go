package netpol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"go4.org/netipx"
	"golang.org/x/sys/unix"
	"k8s.io/utils/ptr"
)

// TableName is kone's nftables table (family ip) that holds the node's policies.
const TableName = "kone-netpol"

// Offsets in the IPv4 header, and of the destination port in the TCP, UDP and SCTP headers.
const (
	sourceOffset   = 12
	destOffset     = 16
	destPortOffset = 2
)

// register is the one data register the rules load into; each match reuses it.
const register = 1

// maxComment is the most of a policy's name a rule's comment keeps: the kernel takes 256 bytes
// of user data, and the library's length field is one byte, while a namespace/name may be 317.
const maxComment = 128

// Program replaces the node's table with rs, in one transaction: a packet meets either the
// old rules or the new ones, never a mix or none. netns is a network namespace's file
// descriptor, or -1 for the process's own.
func Program(rs Ruleset, netns int) error {
	conn, err := connect(netns)
	if err != nil {
		return err
	}
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	// Adding an existing table is no error, deleting a missing one is: add, delete, add
	// replaces whatever was there.
	conn.AddTable(table)
	conn.DelTable(table)
	conn.AddTable(table)
	if err := build(conn, table, rs); err != nil {
		return err
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", TableName, err)
	}
	return nil
}

// Available says why this kernel cannot hold the node's table, or nil if it can: it writes a
// table with a rule of every kind, and deletes it, in one transaction.
func Available(netns int) error {
	conn, err := connect(netns)
	if err != nil {
		return err
	}
	// A rule of every kind Program writes.
	sample := Ruleset{Ingress: []Policy{{Name: "kone/check", Targets: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Rules: []Rule{{
		Peers: []netipx.IPRange{netipx.IPRangeFrom(netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.9"))},
		Ports: []Port{{Protocol: unix.IPPROTO_TCP, First: 80, Last: 90, To: netip.MustParseAddr("10.0.0.1")}},
	}}}}}
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName + "-check"}
	conn.AddTable(table)
	if err := build(conn, table, sample); err != nil {
		return err
	}
	conn.DelTable(table)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: a table like kone's: %w", err)
	}
	return nil
}

func build(conn *nftables.Conn, table *nftables.Table, rs Ruleset) error {
	b := builder{conn: conn, table: table}
	b.direction("ingress", destOffset, sourceOffset, rs.Ingress, nftables.ChainPriorityFilter)
	b.direction("egress", sourceOffset, destOffset, rs.Egress, nftables.ChainPriorityRef(*nftables.ChainPriorityFilter-1))
	return b.err
}

// Remove deletes the node's table, if there is one. A kernel without nftables has none; one
// that does not let kone look is an error.
func Remove(netns int) error {
	conn, err := connect(netns)
	var tables []*nftables.Table
	if err == nil {
		tables, err = conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	}
	switch {
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		return fmt.Errorf("nftables: %w", err)
	case err != nil || !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }):
		return nil
	}
	conn.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("remove nftables table %s: %w", TableName, err)
	}
	return nil
}

func connect(netns int) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if netns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return conn, nil
}

// builder adds a Ruleset's chains, sets and rules to a transaction; the first error stops it.
type builder struct {
	conn  *nftables.Conn
	table *nftables.Table
	err   error
}

// direction adds a base chain on the forward hook, where a pod's traffic to other pods and out
// of the node passes, that drops what is not a reply and is not allowed: target is where a
// targeted pod's address is in the packet, peer where the other end's is. The node's own
// traffic to and from its pods does not pass forward, and is always allowed.
func (b *builder) direction(name string, target, peer uint32, policies []Policy, priority *nftables.ChainPriority) {
	base := b.conn.AddChain(&nftables.Chain{
		Name: name, Table: b.table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward,
		Priority: priority, Policy: ptr.To(nftables.ChainPolicyAccept),
	})
	b.rule(base, "", replies()...)
	var isolated []netip.Addr
	for i, pol := range policies {
		isolated = append(isolated, pol.Targets...)
		chain := b.conn.AddChain(&nftables.Chain{Name: fmt.Sprintf("%s-%d", name, i), Table: b.table})
		targets := b.set(fmt.Sprintf("%s-%d", name, i), addrRanges(pol.Targets))
		b.rule(base, pol.Name, append(lookup(target, targets), &expr.Verdict{Kind: expr.VerdictJump, Chain: chain.Name})...)
		for j, r := range pol.Rules {
			var peers []expr.Any
			if !r.AnyPeer {
				peers = lookup(peer, b.set(fmt.Sprintf("%s-%d-%d", name, i, j), r.Peers))
			}
			if r.AnyPort {
				b.rule(chain, "", append(peers, accept())...)
				continue
			}
			for _, p := range r.Ports {
				b.rule(chain, "", slices.Concat(peers, portMatch(p), []expr.Any{accept()})...)
			}
		}
	}
	if len(isolated) > 0 {
		all := b.set(name+"-isolated", addrRanges(isolated))
		b.rule(base, "", slices.Concat(lookup(target, all), []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}})...)
	}
}

// set adds an interval set of IPv4 addresses.
func (b *builder) set(name string, ranges []netipx.IPRange) *nftables.Set {
	s := &nftables.Set{Table: b.table, Name: name, KeyType: nftables.TypeIPAddr, Interval: true}
	var elems []nftables.SetElement
	for _, r := range ranges {
		elems = append(elems, nftables.SetElement{Key: r.From().AsSlice()})
		// The end is exclusive; a range up to the last address has none.
		if next := r.To().Next(); next.IsValid() {
			elems = append(elems, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	if err := b.conn.AddSet(s, elems); err != nil && b.err == nil {
		b.err = fmt.Errorf("nftables set %s: %w", name, err)
	}
	return s
}

func (b *builder) rule(chain *nftables.Chain, comment string, exprs ...expr.Any) {
	r := &nftables.Rule{Table: b.table, Chain: chain, Exprs: exprs}
	if comment != "" {
		if len(comment) > maxComment {
			comment = comment[:maxComment]
		}
		r.UserData = userdata.AppendString(nil, userdata.TypeComment, comment)
	}
	b.conn.AddRule(r)
}

// replies accepts packets of connections already allowed, and what they bring about (ICMP
// errors, FTP data): a policy is checked on a connection's first packet.
func replies() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: register, Key: expr.CtKeySTATE},
		&expr.Bitwise{
			SourceRegister: register, DestRegister: register, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: register, Data: binaryutil.NativeEndian.PutUint32(0)},
		accept(),
	}
}

// lookup matches the address at offset in the IPv4 header against s.
func lookup(offset uint32, s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: register, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Lookup{SourceRegister: register, SetName: s.Name, SetID: s.ID},
	}
}

// portMatch matches a protocol's destination port range, and the destination for a named port.
func portMatch(p Port) []expr.Any {
	var out []expr.Any
	if p.To.IsValid() {
		out = append(out,
			&expr.Payload{DestRegister: register, Base: expr.PayloadBaseNetworkHeader, Offset: destOffset, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: register, Data: p.To.AsSlice()})
	}
	out = append(out,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: register},
		&expr.Cmp{Op: expr.CmpOpEq, Register: register, Data: []byte{p.Protocol}})
	if p.First == 0 && p.Last == 65535 {
		return out
	}
	return append(out,
		&expr.Payload{DestRegister: register, Base: expr.PayloadBaseTransportHeader, Offset: destPortOffset, Len: 2},
		&expr.Range{Op: expr.CmpOpEq, Register: register, FromData: be16(p.First), ToData: be16(p.Last)})
}

func accept() expr.Any { return &expr.Verdict{Kind: expr.VerdictAccept} }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// addrRanges are addresses as merged ranges, as an interval set needs them.
func addrRanges(addrs []netip.Addr) []netipx.IPRange {
	var b netipx.IPSetBuilder
	for _, a := range addrs {
		b.Add(a)
	}
	set, _ := b.IPSet() // only invalid addresses make an error, and those are left out
	return set.Ranges()
}
